//! Pure extraction of apiserver addresses from the `kubernetes` service's
//! EndpointSlices or Endpoints. Ports are ignored on purpose: backends always
//! use the configured API port (k0s does the same).

use std::collections::BTreeSet;
use std::net::IpAddr;

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

#[cfg(test)]
mod tests {
    use super::*;

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
