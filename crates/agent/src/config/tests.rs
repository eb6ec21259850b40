//! k0s's unit-test cases for CPLB validation (`cplb_test.go`), cplb's
//! stricter checks, and whole k0s / k0sctl documents.

use std::time::Duration;

use super::*;

/// k0s's tests resolve the default interface to `fake-nic-0`.
struct FakeHost;

const ETH0_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];

impl Host for FakeHost {
    fn default_interface(&self) -> Result<String, String> {
        Ok("fake-nic-0".to_string())
    }
    fn interfaces(&self) -> Result<Vec<(String, [u8; 6])>, String> {
        Ok(vec![
            ("lo".to_string(), [0; 6]),
            ("eth0".to_string(), ETH0_MAC),
        ])
    }
}

struct NoRouteHost;

impl Host for NoRouteHost {
    fn default_interface(&self) -> Result<String, String> {
        Err("default route not found".to_string())
    }
    fn interfaces(&self) -> Result<Vec<(String, [u8; 6])>, String> {
        Ok(vec![])
    }
}

/// A document with just the keepalived section, indented under it.
fn keepalived(body: &str) -> String {
    let mut doc = String::from(
        "spec:\n  network:\n    controlPlaneLoadBalancing:\n      enabled: true\n      keepalived:\n",
    );
    for line in body.lines() {
        doc.push_str("        ");
        doc.push_str(line);
        doc.push('\n');
    }
    doc
}

fn ok(doc: &str) -> Config {
    parse(doc, &FakeHost).unwrap_or_else(|e| panic!("{e}\n--- document:\n{doc}"))
}

fn problems(doc: &str) -> Vec<Problem> {
    match parse(doc, &FakeHost) {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

fn messages(doc: &str) -> Vec<String> {
    problems(doc).into_iter().map(|p| p.message).collect()
}

// ===== VRRP instances: k0s's cases =====

#[test]
fn vrrp_defaults_are_k0s_defaults() {
    let config = ok(&keepalived(
        "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: secret\n- virtualIPs: [\"192.0.2.101/24\"]\n  authPass: secret",
    ));
    let ids: Vec<u8> = config
        .vrrp_instances
        .iter()
        .map(|i| i.virtual_router_id)
        .collect();
    assert_eq!(ids, vec![51, 52]);
    for instance in &config.vrrp_instances {
        assert_eq!(instance.interface, "fake-nic-0");
        assert_eq!(instance.advert_interval_seconds, 1);
        assert_eq!(instance.address_label, 10000);
        assert!(instance.unicast_peers.is_empty() && instance.unicast_source_ip.is_none());
    }
    assert_eq!(config.api_port, 6443);
    assert_eq!(config.user_space_proxy_bind_port, 6444);
    assert!(config.enabled && !config.disable_load_balancer);
    assert_eq!(config.cplb.priority, 200);
    assert_eq!(config.cplb.vrrp_version, 2);
}

#[test]
fn vrrp_explicit_values_are_kept() {
    let config = ok(&keepalived(
        "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\", \"192.0.2.101/32\"]\n  interface: eth7\n  virtualRouterID: 7\n  advertIntervalSeconds: 3\n  authPass: \"12345678\"\n  unicastSourceIP: 192.0.2.10\n  unicastPeers: [192.0.2.11, 192.0.2.12]\n  addressLabel: 42\nuserSpaceProxyBindPort: 7444",
    ));
    let i = &config.vrrp_instances[0];
    assert_eq!(
        i.virtual_ips,
        vec![
            "192.0.2.100/24".parse().unwrap(),
            "192.0.2.101/32".parse().unwrap()
        ]
    );
    assert_eq!(
        (
            i.interface.as_str(),
            i.virtual_router_id,
            i.advert_interval_seconds
        ),
        ("eth7", 7, 3)
    );
    assert_eq!(i.auth_pass, "12345678");
    assert_eq!(i.unicast_source_ip, Some("192.0.2.10".parse().unwrap()));
    assert_eq!(
        i.unicast_peers,
        vec![
            "192.0.2.11".parse::<IpAddr>().unwrap(),
            "192.0.2.12".parse().unwrap()
        ]
    );
    assert_eq!(i.address_label, 42);
    assert_eq!(config.user_space_proxy_bind_port, 7444);
}

#[test]
fn vrrp_k0s_error_cases() {
    let vip = "- virtualIPs: [\"192.0.2.100/24\"]\n";
    let cases = [
        (format!("{vip}  authPass: \"\""), "AuthPass must be defined"),
        (vip.to_string(), "AuthPass must be defined"),
        (
            format!("{vip}  authPass: \"123456789\""),
            "AuthPass must be 8 characters or less",
        ),
        (
            "- virtualIPs: [\"192.0.2.100\"]\n  authPass: x".to_string(),
            "VirtualIPs must be a CIDR. Got: 192.0.2.100",
        ),
        ("- authPass: x".to_string(), "VirtualIPs must be defined"),
        (
            format!("{vip}  authPass: x\n  unicastPeers: [192.0.2.11]"),
            "UnicastPeers require a valid UnicastSourceIP. Got: ",
        ),
        (
            format!(
                "{vip}  authPass: x\n  unicastSourceIP: controller-0\n  unicastPeers: [192.0.2.11]"
            ),
            "UnicastPeers require a valid UnicastSourceIP. Got: controller-0",
        ),
        (
            format!(
                "{vip}  authPass: x\n  unicastSourceIP: 192.0.2.10\n  unicastPeers: [controller-1]"
            ),
            "UnicastPeers require valid IP addresses. Got: controller-1",
        ),
        (
            format!(
                "{vip}  authPass: x\n  unicastSourceIP: 192.0.2.10\n  unicastPeers: [192.0.2.10]"
            ),
            "UnicastPeers must not contain the UnicastSourceIP. Got: 192.0.2.10",
        ),
        (
            format!("{vip}  authPass: x\n  virtualRouterID: 256"),
            "VirtualRouterID must be in the range of 1-255",
        ),
        (
            format!("{vip}  authPass: x\n  virtualRouterID: -1"),
            "VirtualRouterID must be in the range of 1-255",
        ),
        (
            format!("{vip}  authPass: x\n  addressLabel: 4294967295"),
            "AddressLabel 0xffffffff is reserved",
        ),
    ];
    for (instance, want) in cases {
        let doc = keepalived(&format!("vrrpInstances:\n{instance}"));
        assert_eq!(messages(&doc), vec![want.to_string()], "{instance}");
    }
}

#[test]
fn automatic_vrids_run_out_after_255() {
    let mut body = String::from("vrrpInstances:\n");
    for i in 0..206 {
        body.push_str(&format!(
            "- virtualIPs: [\"192.0.2.{}/32\"]\n  authPass: x\n",
            i % 250 + 1
        ));
    }
    let problems = problems(&keepalived(&body));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0].message,
        "automatic virtualRouterIDs exceeded, specify them explicitly (instance i gets 51 + i, and a VRID is at most 255)"
    );
    assert!(
        problems[0]
            .path
            .ends_with("vrrpInstances[205].virtualRouterID")
    );
}

#[test]
fn proxy_port_and_type_errors() {
    let instance = "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x\n";
    assert_eq!(
        messages(&keepalived(&format!(
            "{instance}userSpaceProxyBindPort: 70000"
        ))),
        vec!["UserSpaceProxyPort must be in the range of 1-65535"]
    );
    let doc = "spec:\n  network:\n    controlPlaneLoadBalancing:\n      type: HAProxy\n";
    assert_eq!(
        messages(doc),
        vec!["unsupported CPLB type: HAProxy. Only allowed value: Keepalived"]
    );
    // `type: ""` means Keepalived, and validation runs even when disabled.
    let disabled = "spec:\n  network:\n    controlPlaneLoadBalancing:\n      type: \"\"\n      keepalived:\n        vrrpInstances:\n        - authPass: x\n";
    assert_eq!(messages(disabled), vec!["VirtualIPs must be defined"]);
}

#[test]
fn default_interface_failure_is_reported_as_k0s_does() {
    let doc = keepalived("vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x");
    let Err(ConfigError::Invalid(problems)) = parse(&doc, &NoRouteHost) else {
        panic!("expected a problem");
    };
    assert_eq!(
        problems[0].message,
        "failed to get default NIC: default route not found"
    );
}

// ===== virtual servers: k0s's cases =====

fn with_server(server: &str) -> String {
    keepalived(&format!(
        "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x\nvirtualServers:\n{server}"
    ))
}

#[test]
fn virtual_server_defaults_and_explicit_values() {
    let config = ok(&with_server("- ipAddress: 192.0.2.100"));
    let vs = &config.virtual_servers[0];
    assert_eq!(vs.delay_loop, Duration::from_secs(60));
    assert_eq!(
        (
            vs.lb_algo.as_str(),
            vs.lb_kind.as_str(),
            vs.persistence_timeout_seconds
        ),
        ("rr", "DR", 360)
    );

    let config = ok(&with_server(
        "- ipAddress: 192.0.2.100\n  delayLoop: 1234567ns\n  lbAlgo: wlc\n  lbKind: NAT\n  persistenceTimeoutSeconds: 100",
    ));
    let vs = &config.virtual_servers[0];
    // k0s truncates to microseconds.
    assert_eq!(vs.delay_loop, Duration::from_micros(1234));
    assert_eq!(
        (
            vs.lb_algo.as_str(),
            vs.lb_kind.as_str(),
            vs.persistence_timeout_seconds
        ),
        ("wlc", "NAT", 100)
    );
}

#[test]
fn virtual_server_k0s_error_cases() {
    let cases: [(&str, &[&str]); 6] = [
        (
            "- ipAddress: \"\"",
            &["IPAddress must be defined", "invalid IP address: "],
        ),
        (
            "- ipAddress: 192.0.2.300",
            &["invalid IP address: 192.0.2.300"],
        ),
        (
            "- ipAddress: 192.0.2.100\n  lbAlgo: fastest",
            &["invalid LBAlgo: fastest "],
        ),
        (
            "- ipAddress: 192.0.2.100\n  lbKind: MAGIC",
            &["invalid LBKind: MAGIC "],
        ),
        (
            "- ipAddress: 192.0.2.100\n  persistenceTimeoutSeconds: -1",
            &["PersistenceTimeout must be in the range of 1-2678400"],
        ),
        (
            "- ipAddress: 192.0.2.100\n  delayLoop: -1s",
            &["DelayLoop must be positive"],
        ),
    ];
    for (server, want) in cases {
        assert_eq!(messages(&with_server(server)), *want, "{server}");
    }
}

// ===== cplb's stricter checks =====

#[test]
fn stricter_checks_than_k0s() {
    let cases = [
        (
            "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\", \"2001:db8::1/64\"]\n  authPass: x",
            "VirtualIPs of one instance must all be IPv4 or all be IPv6 (VRRP runs one family per instance). Got: 2001:db8::1/64",
        ),
        (
            "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x\n  virtualRouterID: 60\n- virtualIPs: [\"192.0.2.101/24\"]\n  authPass: x\n  virtualRouterID: 60",
            "VirtualRouterID 60 is already used by vrrpInstances[0] (line 9) on interface fake-nic-0",
        ),
        (
            "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x\n  advertIntervalSeconds: -2",
            "AdvertIntervalSeconds must be in the range of 1-255",
        ),
        (
            "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x\nuserSpaceProxyBindPort: 6443",
            "UserSpaceProxyPort must differ from the API port 6443 (the default of spec.api.port)",
        ),
        (
            "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x\n  unicastSourceIP: 2001:db8::10\n  unicastPeers: [192.0.2.11]",
            "UnicastSourceIP must be IPv4, like the VirtualIPs. Got: 2001:db8::10",
        ),
        (
            "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x\n  unicastSourceIP: 192.0.2.10\n  unicastPeers: [\"2001:db8::11\"]",
            "UnicastPeers must be IPv4, like the VirtualIPs. Got: 2001:db8::11",
        ),
        (
            "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x\nvirtualServers:\n- ipAddress: 192.0.2.7",
            "IPAddress 192.0.2.7 is not one of the VirtualIPs of the vrrpInstances",
        ),
        (
            "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x\n  interface: 02:42:ac:11:00:99",
            "failed to get NIC for MAC address 02:42:ac:11:00:99: interface with MAC address 02:42:ac:11:00:99 not found",
        ),
    ];
    for (body, want) in cases {
        assert_eq!(
            messages(&keepalived(body)),
            vec![want.to_string()],
            "{body}"
        );
    }
}

#[test]
fn mac_addresses_resolve_in_any_notation() {
    for mac in [
        "02:42:ac:11:00:02",
        "02:42:AC:11:00:02",
        "02-42-ac-11-00-02",
        "0242.ac11.0002",
    ] {
        let config = ok(&keepalived(&format!(
            "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x\n  interface: \"{mac}\""
        )));
        assert_eq!(config.vrrp_instances[0].interface, "eth0", "{mac}");
    }
    assert_eq!(parse_mac("02:42:ac:11:00"), None);
    assert_eq!(parse_mac("eth0"), None);
    assert_eq!(parse_mac("zz:42:ac:11:00:02"), None);
}

#[test]
fn all_problems_are_reported_at_once_with_positions() {
    let doc = keepalived(
        "vrrpInstances:\n- virtualIPs: [\"192.0.2.100\"]\n  authPass: \"123456789\"\n- virtualIPs: [\"192.0.2.101/24\"]\nuserSpaceProxyBindPort: 6443",
    );
    let problems = problems(&doc);
    let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        rendered,
        vec![
            "10:33: spec.network.controlPlaneLoadBalancing.keepalived.userSpaceProxyBindPort: UserSpaceProxyPort must differ from the API port 6443 (the default of spec.api.port)",
            "7:24: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualIPs[0]: VirtualIPs must be a CIDR. Got: 192.0.2.100",
            "8:21: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].authPass: AuthPass must be 8 characters or less",
            // A missing key: the position of the instance that lacks it.
            "9:11: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[1].authPass: AuthPass must be defined",
        ]
    );
}

#[test]
fn misspelt_keys_are_errors_with_their_position() {
    let doc = keepalived("vrrpInstances:\n- virtualIps: [\"192.0.2.100/24\"]\n  authPass: x");
    let Err(ConfigError::Syntax(problem)) = parse(&doc, &FakeHost) else {
        panic!("expected a syntax error");
    };
    assert_eq!(problem.position, Some((7, 11)), "{problem}");
    assert!(
        problem.message.contains("unknown field `virtualIps`"),
        "{problem}"
    );
}

#[test]
fn cplb_settings_section() {
    let doc = format!(
        "{}cplb:\n  vrrpVersion: 3\n  priority: 150\n  adminAddress: \"[::1]:9999\"\n  netfilter: nftables\n  kubeconfig: /etc/kubeconfig\n",
        keepalived("vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x")
    );
    let settings = ok(&doc).cplb;
    assert_eq!(settings.vrrp_version, 3);
    assert_eq!(settings.priority, 150);
    assert_eq!(settings.admin_address, "[::1]:9999".parse().unwrap());
    assert_eq!(settings.netfilter, Netfilter::Nftables);
    assert_eq!(settings.kubeconfig, "/etc/kubeconfig");

    let bad = format!(
        "{}cplb:\n  vrrpVersion: 4\n  priority: 255\n  netfilter: pf\n",
        keepalived("vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x")
    );
    assert_eq!(
        messages(&bad),
        vec![
            "vrrpVersion must be 2 or 3",
            "priority must be in the range of 1-254",
            "netfilter must be iptables or nftables. Got: pf"
        ]
    );
}

fn with_interval(interval: &str, version: u8, vips: &str) -> String {
    format!(
        "{}cplb:\n  vrrpVersion: {version}\n  advertInterval: {interval}\n",
        keepalived(&format!(
            "vrrpInstances:\n- virtualIPs: [\"{vips}\"]\n  authPass: x"
        ))
    )
}

#[test]
fn a_sub_second_advert_interval_runs_every_instance_on_vrrpv3() {
    let config = ok(&with_interval("100ms", 3, "192.0.2.100/24"));
    assert_eq!(
        config.cplb.advert_interval,
        Some(Duration::from_millis(100))
    );
    // advertIntervalSeconds keeps its k0s meaning; the option wins.
    assert_eq!(config.vrrp_instances[0].advert_interval_seconds, 1);
    assert_eq!(
        config.advert_interval(&config.vrrp_instances[0]),
        Duration::from_millis(100)
    );
    assert!(config.to_yaml().contains("advertInterval: 100ms"));
    // Without it, the instance's seconds; printed as null.
    let plain = ok(&keepalived(
        "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x\n  advertIntervalSeconds: 2",
    ));
    assert_eq!(
        plain.advert_interval(&plain.vrrp_instances[0]),
        Duration::from_secs(2)
    );
    assert!(plain.to_yaml().contains("advertInterval: null"));
    // IPv6 instances run VRRPv3 whatever vrrpVersion says; the extremes.
    ok(&with_interval("10ms", 2, "2001:db8::100/64"));
    ok(&with_interval("40.95s", 3, "192.0.2.100/24"));
    // An instance's own advertIntervalSeconds is overridden: a warning.
    let both = format!(
        "{}cplb:\n  vrrpVersion: 3\n  advertInterval: 200ms\n",
        keepalived(
            "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x\n  advertIntervalSeconds: 2"
        )
    );
    let warned = ok(&both);
    assert_eq!(warned.warnings.len(), 1, "{:?}", warned.warnings);
    assert_eq!(warned.warnings[0].severity, Severity::Warning);
    assert!(
        warned.warnings[0]
            .message
            .contains("ignored: cplb.advertInterval (200ms)"),
        "{}",
        warned.warnings[0].message
    );
}

#[test]
fn advert_intervals_vrrp_cannot_carry_are_refused_with_the_reason() {
    let v2 = messages(&with_interval("100ms", 2, "192.0.2.100/24"));
    assert_eq!(v2.len(), 1, "{v2:?}");
    assert!(
        v2[0].starts_with("advertInterval (100ms) needs VRRPv3")
            && v2[0].contains("vrrpInstances[0] runs VRRPv2")
            && v2[0].contains("keepalived"),
        "{v2:?}"
    );
    assert_eq!(
        messages(&with_interval("125ms", 3, "192.0.2.100/24")),
        [
            "advertInterval must be a whole number of centiseconds, the unit VRRPv3 adverts carry (RFC 5798 §5.2.7): the nearest valid value is 130ms. Got: 125ms"
        ]
    );
    assert!(
        messages(&with_interval("104ms", 3, "192.0.2.100/24"))[0]
            .contains("the nearest valid value is 100ms")
    );
    for out_of_range in ["5ms", "0s", "-100ms", "41s", "1m"] {
        assert_eq!(
            messages(&with_interval(out_of_range, 3, "192.0.2.100/24")),
            [format!(
                "advertInterval must be from 10ms to 40.95s: VRRPv3 carries 12 bits of centiseconds (RFC 5798 §5.2.7), and 10ms is also the shortest keepalived accepts. Got: {out_of_range}"
            )],
        );
    }
    assert_eq!(
        messages(&with_interval("100", 3, "192.0.2.100/24")),
        ["advertInterval must be a duration like 100ms or 1s. Got: 100"]
    );
}

// ===== whole documents =====

#[test]
fn k0s_cluster_config_with_api_port() {
    let doc = include_str!("../../tests/data/k0s-full.yaml");
    let config = ok(doc);
    assert!(config.enabled);
    assert_eq!(config.api_port, 6443);
    assert_eq!(config.vrrp_instances.len(), 2);
    assert_eq!(
        config.vrrp_instances[1].virtual_ips,
        vec!["2001:db8::100/64".parse().unwrap()]
    );
    assert_eq!(config.vrrp_instances[1].virtual_router_id, 52);
    assert_eq!(config.vrrp_instances[1].address_label, 12345);

    let moved = doc.replace("    port: 6443", "    port: 7443");
    assert_eq!(ok(&moved).api_port, 7443);
}

#[test]
fn k0sctl_example_from_the_k0s_docs() {
    let config = ok(include_str!("../../tests/data/k0sctl-docs.yaml"));
    let instance = &config.vrrp_instances[0];
    assert_eq!(
        instance.virtual_ips,
        vec!["192.168.122.200/24".parse().unwrap()]
    );
    assert_eq!(instance.auth_pass, "Example");
    assert_eq!(instance.virtual_router_id, 51);
    assert_eq!(instance.interface, "fake-nic-0");
}

#[test]
fn a_document_without_the_section_is_refused() {
    let problems = problems(
        "apiVersion: k0s.k0sproject.io/v1beta1\nkind: ClusterConfig\nspec:\n  api:\n    port: 6443\n",
    );
    assert_eq!(problems[0].path, "spec.network.controlPlaneLoadBalancing");
    assert!(matches!(
        parse("[1, 2", &FakeHost),
        Err(ConfigError::Syntax(_))
    ));
}

#[test]
fn effective_configuration_prints_every_default() {
    let yaml = ok(&keepalived(
        "vrrpInstances:\n- virtualIPs: [\"192.0.2.100/24\"]\n  authPass: x",
    ))
    .to_yaml();
    for needle in [
        "apiPort: 6443",
        "userSpaceProxyBindPort: 6444",
        "virtualRouterID: 51",
        "interface: fake-nic-0",
        "advertIntervalSeconds: 1",
        "addressLabel: 10000",
        "priority: 200",
    ] {
        assert!(yaml.contains(needle), "{needle} missing from:\n{yaml}");
    }
}

// ===== Go durations =====

#[test]
fn go_durations_parse_like_go() {
    let cases: [(&str, Option<i128>); 12] = [
        ("0", Some(0)),
        ("1m", Some(60_000_000_000)),
        ("1.5s", Some(1_500_000_000)),
        ("1h2m3s", Some(3_723_000_000_000)),
        ("300ms", Some(300_000_000)),
        ("10us", Some(10_000)),
        ("10µs", Some(10_000)),
        ("1234567ns", Some(1_234_567)),
        ("-3s", Some(-3_000_000_000)),
        ("", None),
        ("5", None),
        ("1d", None),
    ];
    for (text, want) in cases {
        assert_eq!(parse_go_duration(text), want, "{text:?}");
    }
}
