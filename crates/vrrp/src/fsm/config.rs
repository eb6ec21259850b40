//! A virtual router's configuration, validated once when the router is built.

use std::net::IpAddr;
use std::time::Duration;

use crate::wire::{Auth, Centis, Version};

/// Gratuitous ARP / unsolicited NA policy on becoming Master. The defaults
/// are keepalived's: 5 at once, 5 more after 5 s, no periodic refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GarpConfig {
    /// Messages per VIP in each burst (keepalived `vrrp_garp_master_repeat`).
    pub repeat: u32,
    /// Delay of the second burst after becoming Master; `None` for no second
    /// burst (keepalived `vrrp_garp_master_delay`).
    pub master_delay: Option<Duration>,
    /// Period of a refresh burst while Master; `None` for none (keepalived
    /// `vrrp_garp_master_refresh`).
    pub refresh: Option<Duration>,
}

impl Default for GarpConfig {
    fn default() -> Self {
        GarpConfig {
            repeat: 5,
            master_delay: Some(Duration::from_secs(5)),
            refresh: None,
        }
    }
}

/// Everything one virtual router needs to know. Build it with
/// [`Config::new`] (keepalived's defaults) and adjust the public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Protocol version: v2 for IPv4 (what keepalived and k0s use), v3 for
    /// IPv4 or IPv6.
    pub version: Version,
    /// Virtual Router Identifier, 1..=255.
    pub vrid: u8,
    /// Priority, 1..=255; 255 means this router owns the addresses and
    /// becomes Master at once (RFC 3768 §6.4.1). keepalived's default is 100;
    /// k0s renders 200 on every node.
    pub priority: u8,
    /// Advertisement_Interval. VRRPv2 carries whole seconds only.
    pub advert_interval: Centis,
    /// Preempt_Mode: a higher-priority Backup takes over from a lower-priority
    /// Master (RFC 3768 §6.1). On by default, as in keepalived.
    pub preempt: bool,
    /// With preemption on, how long after start-up a Backup still defers to a
    /// lower-priority Master (keepalived `preempt_delay`). Zero by default.
    pub preempt_delay: Duration,
    /// VRRPv2 authentication; must be [`Auth::None`] for v3.
    pub auth: Auth,
    /// The virtual addresses, all of one family.
    pub vips: Vec<IpAddr>,
    /// This router's own address on the interface: the source of its adverts
    /// and the tie-breaker between equal priorities (RFC 3768 §6.4.3).
    pub primary_ip: IpAddr,
    /// Gratuitous ARP / NA bursts on becoming Master.
    pub garp: GarpConfig,
    /// keepalived's default behaviour (`vrrp_lower_prio_no_advert` off): a
    /// Master that receives a lower-priority advert answers with an advert at
    /// once instead of waiting for its timer, so a split heals within one
    /// round trip. RFC 3768 §6.4.3 only says to discard it.
    pub answer_lower_priority: bool,
}

impl Config {
    /// A configuration with keepalived's defaults: priority 100, advert 1 s,
    /// preemption on, no auth, keepalived's GARP bursts.
    pub fn new(version: Version, vrid: u8, primary_ip: IpAddr, vips: Vec<IpAddr>) -> Config {
        Config {
            version,
            vrid,
            priority: 100,
            advert_interval: Centis(100),
            preempt: true,
            preempt_delay: Duration::ZERO,
            auth: Auth::None,
            vips,
            primary_ip,
            garp: GarpConfig::default(),
            answer_lower_priority: true,
        }
    }

    /// Checks the invariants the state machine and the wire format rely on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vrid == 0 {
            return Err(ConfigError::ZeroVrid);
        }
        if self.priority == 0 {
            return Err(ConfigError::ZeroPriority);
        }
        let interval = self.advert_interval.0;
        let interval_ok = match self.version {
            // RFC 3768 §5.3.7: whole seconds in one octet.
            Version::V2 => interval > 0 && interval.is_multiple_of(100) && interval <= 255 * 100,
            // RFC 5798 §5.2.7: 12 bits of centiseconds.
            Version::V3 => interval > 0 && interval <= Centis::V3_MAX.0,
        };
        if !interval_ok {
            return Err(ConfigError::Interval {
                version: self.version,
                interval: self.advert_interval,
            });
        }
        if self.version == Version::V3 && self.auth != Auth::None {
            // RFC 5798 §9: VRRPv3 has no authentication.
            return Err(ConfigError::AuthWithV3);
        }
        if self.vips.is_empty() {
            return Err(ConfigError::NoVips);
        }
        if self.vips.len() > usize::from(u8::MAX) {
            return Err(ConfigError::TooManyVips(self.vips.len()));
        }
        let v6 = self.primary_ip.is_ipv6();
        if self.vips.iter().any(|vip| vip.is_ipv6() != v6) {
            return Err(ConfigError::MixedFamilies);
        }
        if v6 && self.version == Version::V2 {
            // RFC 3768 is IPv4 only.
            return Err(ConfigError::Ipv6WithV2);
        }
        if self.garp.repeat == 0 {
            return Err(ConfigError::ZeroGarpRepeat);
        }
        if self.garp.refresh == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroGarpRefresh);
        }
        Ok(())
    }
}

/// Why a [`Config`] cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// VRID 0 is not a valid virtual router.
    #[error("virtual router ID must be in 1..=255")]
    ZeroVrid,
    /// Priority 0 is reserved for a resigning Master.
    #[error("priority must be in 1..=255")]
    ZeroPriority,
    /// The interval cannot be carried by this version.
    #[error("advert interval {interval} cannot be sent with VRRP{version}")]
    Interval {
        /// The configured version.
        version: Version,
        /// The configured interval.
        interval: Centis,
    },
    /// VRRPv3 has no authentication.
    #[error("VRRPv3 has no authentication")]
    AuthWithV3,
    /// A virtual router needs at least one address.
    #[error("no virtual IP address")]
    NoVips,
    /// More addresses than the count octet holds.
    #[error("{0} virtual IP addresses, at most 255")]
    TooManyVips(usize),
    /// The addresses and the primary address must share one family.
    #[error("virtual IPs and the primary address must all be IPv4 or all be IPv6")]
    MixedFamilies,
    /// VRRPv2 is IPv4 only.
    #[error("VRRPv2 is IPv4 only; use VRRPv3 for IPv6")]
    Ipv6WithV2,
    /// A burst needs at least one message.
    #[error("GARP repeat count must be at least 1")]
    ZeroGarpRepeat,
    /// A zero refresh period would fire forever.
    #[error("GARP refresh period must be positive")]
    ZeroGarpRefresh,
}
