//! Pure extraction of apiserver addresses from the `kubernetes` service's
//! EndpointSlices or Endpoints. Ports are ignored on purpose: backends always
//! use the configured API port (k0s does the same).
//!
//! [`exclusion`] says which of those addresses must never become a backend.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Ready addresses of one slice. An endpoint whose `conditions.ready` is
/// unset counts as ready (the API says consumers should read "unknown" as
/// ready); `FQDN` slices and unparsable addresses are skipped.
pub fn slice_addresses(slice: &EndpointSlice) -> BTreeSet<IpAddr> {
    if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
        return BTreeSet::new();
    }
    slice
        .endpoints
        .iter()
        .filter(|endpoint| {
            endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true)
        })
        .flat_map(|endpoint| endpoint.addresses.iter())
        .filter_map(|address| address.parse::<IpAddr>().ok())
        .collect()
}

/// The union of ready addresses over all slices (both address families,
/// mirrored slices with generated names included).
pub fn slices_addresses<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeSet<IpAddr> {
    slices.into_iter().flat_map(slice_addresses).collect()
}

/// Ready addresses (`subsets[*].addresses[*].ip`) of an Endpoints object;
/// `notReadyAddresses` are ignored, as in k0s.
pub fn endpoints_addresses(endpoints: &Endpoints) -> BTreeSet<IpAddr> {
    endpoints
        .subsets
        .iter()
        .flatten()
        .flat_map(|subset| subset.addresses.iter().flatten())
        .filter_map(|address| address.ip.parse::<IpAddr>().ok())
        .collect()
}

/// Why an endpoint address is never used as a backend.
///
/// With cplb's OUTPUT rule every local connection to VIP:6443 is redirected
/// to the proxy, including the proxy's own connections to its backends: a
/// backend that is the VIP, or that reaches this host (loopback,
/// unspecified), makes the proxy connect to itself in a loop until every
/// connection slot is used (reliability review F6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExclusionReason {
    /// `0.0.0.0/8` or `::`: a connect to it reaches this host (RFC 1122
    /// §3.2.1.3 "this host on this network").
    Unspecified,
    /// `127.0.0.0/8` or `::1`: this host, not an apiserver of the cluster.
    Loopback,
    /// `224.0.0.0/4` or `ff00::/8`: not a TCP destination.
    Multicast,
    /// `169.254.0.0/16` or `fe80::/10`: only valid on one link, and an
    /// endpoint carries no interface to scope it.
    LinkLocal,
    /// `255.255.255.255`: not a TCP destination.
    Broadcast,
    /// Listed in the configuration (the VIPs: k0s with `externalAddress`
    /// and its endpoint reconciler enabled publishes the VIP there).
    Configured,
}

impl ExclusionReason {
    /// Every reason, for metrics that list each label even at zero.
    pub const ALL: [ExclusionReason; 6] = [
        Self::Unspecified,
        Self::Loopback,
        Self::Multicast,
        Self::LinkLocal,
        Self::Broadcast,
        Self::Configured,
    ];

    /// Short label for logs, metrics and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Multicast => "multicast",
            Self::LinkLocal => "link_local",
            Self::Broadcast => "broadcast",
            Self::Configured => "configured",
        }
    }
}

impl std::fmt::Display for ExclusionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why `ip` must not become a backend, or `None` if it may.
///
/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are judged as the IPv4
/// address they reach. `configured` holds addresses excluded by the
/// configuration (the VIPs); `allow_loopback` admits loopback addresses,
/// for tests and single-host labs whose apiservers listen on `127.0.0.0/8`.
pub fn exclusion(
    ip: IpAddr,
    configured: &BTreeSet<IpAddr>,
    allow_loopback: bool,
) -> Option<ExclusionReason> {
    let ip = ip.to_canonical();
    if configured.contains(&ip) || configured.iter().any(|c| c.to_canonical() == ip) {
        return Some(ExclusionReason::Configured);
    }
    let reason = match ip {
        IpAddr::V4(v4) => {
            if v4.octets()[0] == 0 {
                Some(ExclusionReason::Unspecified)
            } else if v4.is_loopback() {
                Some(ExclusionReason::Loopback)
            } else if v4.is_multicast() {
                Some(ExclusionReason::Multicast)
            } else if v4.is_link_local() {
                Some(ExclusionReason::LinkLocal)
            } else if v4 == Ipv4Addr::BROADCAST {
                Some(ExclusionReason::Broadcast)
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some(ExclusionReason::Unspecified)
            } else if v6.is_loopback() {
                Some(ExclusionReason::Loopback)
            } else if v6.is_multicast() {
                Some(ExclusionReason::Multicast)
            } else if v6.is_unicast_link_local() {
                Some(ExclusionReason::LinkLocal)
            } else {
                None
            }
        }
    };
    match reason {
        Some(ExclusionReason::Loopback) if allow_loopback => None,
        other => other,
    }
}

/// Splits endpoint addresses into usable backends and excluded addresses
/// (each with its reason), see [`exclusion`].
pub fn partition(
    addresses: &BTreeSet<IpAddr>,
    configured: &BTreeSet<IpAddr>,
    allow_loopback: bool,
) -> (BTreeSet<IpAddr>, BTreeMap<IpAddr, ExclusionReason>) {
    let mut usable = BTreeSet::new();
    let mut excluded = BTreeMap::new();
    for ip in addresses {
        match exclusion(*ip, configured, allow_loopback) {
            Some(reason) => {
                excluded.insert(*ip, reason);
            }
            None => {
                usable.insert(*ip);
            }
        }
    }
    (usable, excluded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_that_never_become_backends() {
        let vip = ips(&["192.0.2.100", "2001:db8::100"]);
        let cases = [
            ("0.0.0.0", Some(ExclusionReason::Unspecified)),
            ("0.1.2.3", Some(ExclusionReason::Unspecified)),
            ("::", Some(ExclusionReason::Unspecified)),
            ("127.0.0.1", Some(ExclusionReason::Loopback)),
            ("127.255.0.9", Some(ExclusionReason::Loopback)),
            ("::1", Some(ExclusionReason::Loopback)),
            ("::ffff:127.0.0.1", Some(ExclusionReason::Loopback)),
            ("224.0.0.18", Some(ExclusionReason::Multicast)),
            ("239.1.1.1", Some(ExclusionReason::Multicast)),
            ("ff02::12", Some(ExclusionReason::Multicast)),
            ("169.254.1.1", Some(ExclusionReason::LinkLocal)),
            ("fe80::1", Some(ExclusionReason::LinkLocal)),
            ("255.255.255.255", Some(ExclusionReason::Broadcast)),
            ("192.0.2.100", Some(ExclusionReason::Configured)),
            ("::ffff:192.0.2.100", Some(ExclusionReason::Configured)),
            ("2001:db8::100", Some(ExclusionReason::Configured)),
            ("192.0.2.11", None),
            ("2001:db8::11", None),
            ("::ffff:192.0.2.11", None),
            ("10.0.0.1", None),
        ];
        for (address, expected) in cases {
            let ip: IpAddr = address.parse().unwrap();
            assert_eq!(exclusion(ip, &vip, false), expected, "{address}");
        }
        // Loopback can be allowed (tests on 127.0.0.x); nothing else can.
        let loopback: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(exclusion(loopback, &vip, true), None);
        let unspecified: IpAddr = "0.0.0.0".parse().unwrap();
        assert_eq!(
            exclusion(unspecified, &vip, true),
            Some(ExclusionReason::Unspecified)
        );
        // A configured loopback address stays excluded.
        assert_eq!(
            exclusion(loopback, &ips(&["127.0.0.2"]), true),
            Some(ExclusionReason::Configured)
        );
    }

    #[test]
    fn partition_keeps_only_usable_addresses() {
        let (usable, excluded) = partition(
            &ips(&["192.0.2.100", "127.0.0.1", "0.0.0.0", "192.0.2.11"]),
            &ips(&["192.0.2.100"]),
            false,
        );
        assert_eq!(usable, ips(&["192.0.2.11"]));
        assert_eq!(
            excluded.into_iter().collect::<Vec<_>>(),
            vec![
                ("0.0.0.0".parse().unwrap(), ExclusionReason::Unspecified),
                ("127.0.0.1".parse().unwrap(), ExclusionReason::Loopback),
                ("192.0.2.100".parse().unwrap(), ExclusionReason::Configured),
            ]
        );
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn slice(json: &str) -> EndpointSlice {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn real_apiserver_slice() {
        let s = slice(include_str!(
            "../tests/fixtures/endpointslice-kubernetes.json"
        ));
        assert_eq!(
            slice_addresses(&s),
            ips(&["192.0.2.11", "192.0.2.12", "192.0.2.13"])
        );
    }

    #[test]
    fn not_ready_and_unknown_readiness() {
        let s = slice(include_str!(
            "../tests/fixtures/endpointslice-mixed-ready.json"
        ));
        // ready=false is skipped; a missing `ready` counts as ready; bad addresses are skipped.
        assert_eq!(slice_addresses(&s), ips(&["192.0.2.1", "192.0.2.3"]));
    }

    #[test]
    fn fqdn_slice_is_ignored() {
        let s = slice(
            r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
                "metadata":{"name":"x","namespace":"default"},"addressType":"FQDN",
                "endpoints":[{"addresses":["example.invalid"]}]}"#,
        );
        assert!(slice_addresses(&s).is_empty());
    }

    #[test]
    fn empty_slice() {
        let s = slice(
            r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
                "metadata":{"name":"kubernetes","namespace":"default"},"addressType":"IPv4",
                "endpoints":null}"#,
        );
        assert!(slice_addresses(&s).is_empty());
    }

    #[test]
    fn union_over_families_and_mirrored_slices() {
        let v4 = slice(include_str!(
            "../tests/fixtures/endpointslice-kubernetes.json"
        ));
        let v6 = slice(include_str!("../tests/fixtures/endpointslice-ipv6.json"));
        let mirrored = slice(
            r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
                "metadata":{"name":"kubernetes-x7k2q","namespace":"default"},"addressType":"IPv4",
                "endpoints":[{"addresses":["192.0.2.12"]},{"addresses":["192.0.2.99"],"conditions":{"ready":true}}]}"#,
        );
        assert_eq!(
            slices_addresses([&v4, &v6, &mirrored]),
            ips(&[
                "192.0.2.11",
                "192.0.2.12",
                "192.0.2.13",
                "192.0.2.99",
                "2001:db8::11",
                "2001:db8::12"
            ])
        );
    }

    #[test]
    fn endpoints_ready_addresses_only() {
        let e: Endpoints =
            serde_json::from_str(include_str!("../tests/fixtures/endpoints-kubernetes.json"))
                .unwrap();
        assert_eq!(
            endpoints_addresses(&e),
            ips(&["192.0.2.11", "192.0.2.12", "2001:db8::11"])
        );
    }

    #[test]
    fn endpoints_without_subsets() {
        let e: Endpoints = serde_json::from_str(
            r#"{"apiVersion":"v1","kind":"Endpoints","metadata":{"name":"kubernetes","namespace":"default"}}"#,
        )
        .unwrap();
        assert!(endpoints_addresses(&e).is_empty());
    }
}
