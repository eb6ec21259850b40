//! Broken configurations a k0s user could write, each with the exact
//! message and position `cplb validate` prints, and proof that `cplb run`
//! refuses each with the same lines (and exit status 78, EX_CONFIG), except
//! an interface or address the host has not got yet, which `run` waits for.
//!
//! Both run the real binary inside one network namespace of ours with
//! `eth0` (192.0.2.11/24, 2001:db8::11/64) and `bare0` (no address), so
//! the host-dependent checks (an interface that does not exist, no address
//! to send adverts from, a VIP that is the node's own address) see a known
//! host. `CPLB_BLESS=1` prints what the binary said instead of failing, to
//! review a new case.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use cplb_e2e::{Host, Lab};

#[path = "support/markdown.rs"]
mod markdown;
#[path = "support/scratch.rs"]
mod scratch;
use markdown::yaml_blocks;
use scratch::Scratch;

const CPLB: &str = env!("CARGO_BIN_EXE_cplb");

/// The k0s document every case starts from: line 8 is the instance.
const BASE: &str = "spec:
  network:
    controlPlaneLoadBalancing:
      enabled: true
      type: Keepalived
      keepalived:
        vrrpInstances:
        - virtualIPs: [\"192.0.2.100/24\"]
          authPass: secret
          interface: eth0
";

/// `BASE` with `from` replaced by `to`.
fn base_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

/// `BASE` with `extra` appended.
fn base_plus(extra: &str) -> String {
    format!("{BASE}{extra}")
}

/// `n` instances with automatic VRIDs (the 205th onward have none left).
fn many_instances(n: usize) -> String {
    let mut doc = String::from(
        "spec:\n  network:\n    controlPlaneLoadBalancing:\n      enabled: true\n      keepalived:\n        vrrpInstances:\n",
    );
    for i in 0..n {
        doc.push_str(&format!(
            "        - virtualIPs: [\"10.{}.{}.1/32\"]\n          authPass: x\n          interface: eth0\n",
            i / 250,
            i % 250
        ));
    }
    doc
}

/// (name, document, expected lines with `F` for the file's path).
fn cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    vec![
        // ===== The YAML itself =====
        (
            "key_typo",
            base_with("authPass", "authpass"),
            vec![
                "F:9:11: vrrpInstances: unknown field `authpass`, expected one of virtualIPs, interface, virtualRouterID, advertIntervalSeconds, authPass, unicastPeers, unicastSourceIP, addressLabel",
            ],
        ),
        (
            "interval_with_unit",
            base_plus("          advertIntervalSeconds: 1s\n"),
            vec![
                "F:11:34: advertIntervalSeconds: must be a whole number of seconds, without a unit. Got: 1s",
            ],
        ),
        (
            "vips_not_a_list",
            base_with("[\"192.0.2.100/24\"]", "192.0.2.100/24"),
            vec![
                "F:8:23: virtualIPs: must be a list: [\"a\", \"b\"] on the same line, or one `- item` per line below the key. Got: 192.0.2.100/24",
            ],
        ),
        (
            "instances_as_a_map",
            base_with("        - virtualIPs", "          virtualIPs"),
            vec![
                "F:8:11: vrrpInstances: must be a list: [\"a\", \"b\"] on the same line, or one `- item` per line below the key. Got: a section of `key: value` lines (a `- ` before the first key of each entry makes it one)",
            ],
        ),
        (
            "tab_in_indentation",
            base_with("          authPass", "\t  authPass"),
            vec![
                "F:9:4: tabs disallowed within this context (block indentation): indent with spaces, not tabs",
            ],
        ),
        (
            "section_name_typo",
            base_with("controlPlaneLoadBalancing", "controlPlaneLoadbalancing"),
            vec![
                "F:3:5: spec.network.controlPlaneLoadBalancing: not found; line 3 has `controlPlaneLoadbalancing`: keys are case-sensitive, write `controlPlaneLoadBalancing`",
            ],
        ),
        (
            "enabled_not_a_bool",
            base_with("enabled: true", "enabled: maybe"),
            vec!["F:4:16: enabled: must be true or false. Got: maybe"],
        ),
        // ===== k0s's rules =====
        (
            "missing_auth_pass",
            base_with("          authPass: secret\n", ""),
            vec![
                "F:8:11: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].authPass: AuthPass must be defined",
            ],
        ),
        (
            "vip_without_prefix",
            base_with("192.0.2.100/24", "192.0.2.100"),
            vec![
                "F:8:24: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualIPs[0]: VirtualIPs must be a CIDR. Got: 192.0.2.100",
            ],
        ),
        (
            "auth_pass_too_long",
            base_with("secret", "my-cluster-password"),
            vec![
                "F:9:21: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].authPass: AuthPass must be 8 characters or less",
            ],
        ),
        (
            "wrong_type",
            base_with("Keepalived", "keepalived"),
            vec![
                "F:5:13: spec.network.controlPlaneLoadBalancing.type: unsupported CPLB type: keepalived. Only allowed value: Keepalived",
            ],
        ),
        (
            "peers_without_source",
            base_plus("          unicastPeers: [192.0.2.12]\n"),
            vec![
                "F:8:11: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].unicastSourceIP: UnicastPeers require a valid UnicastSourceIP. Got: ",
            ],
        ),
        (
            "out_of_range_values",
            base_plus(
                "          virtualRouterID: 256\n          addressLabel: 4294967295\n        userSpaceProxyBindPort: 70000\n",
            ),
            vec![
                "F:13:33: spec.network.controlPlaneLoadBalancing.keepalived.userSpaceProxyBindPort: UserSpaceProxyPort must be in the range of 1-65535",
                "F:11:28: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualRouterID: VirtualRouterID must be in the range of 1-255",
                "F:12:25: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].addressLabel: AddressLabel 0xffffffff is reserved",
            ],
        ),
        (
            "config_template",
            base_plus("        configTemplateVRRP: \"vrrp_instance x {}\"\n"),
            vec![
                "F:11:29: spec.network.controlPlaneLoadBalancing.keepalived.configTemplateVRRP: keepalived config templates do not apply to cplb, which runs no keepalived; remove them",
            ],
        ),
        (
            "api_port_zero",
            format!("spec:\n  api:\n    port: 0\n{}", &BASE[6..]),
            vec![
                "F:3:11: spec.api.port: port: Invalid value: 0: must be between 1 and 65535, inclusive",
            ],
        ),
        // ===== what run cannot run =====
        (
            "disabled",
            base_with("enabled: true", "enabled: false"),
            vec![
                "F:4:16: spec.network.controlPlaneLoadBalancing.enabled: is false, so cplb has nothing to run (set enabled: true)",
            ],
        ),
        (
            "no_instances",
            "spec:\n  network:\n    controlPlaneLoadBalancing:\n      enabled: true\n".to_owned(),
            vec![
                "F:4:7: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances: no VRRP instance: no virtual IP to run (k0s skips keepalived in this case too)",
            ],
        ),
        (
            "ipv6_interval_over_40s",
            base_with(
                "192.0.2.100/24\"]",
                "2001:db8::100/64\"]\n          advertIntervalSeconds: 60",
            ),
            vec![
                "F:9:34: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].advertIntervalSeconds: AdvertIntervalSeconds must be in the range of 1-40 for VRRPv3, which carries at most 40.95 s (IPv6 VirtualIPs always run VRRPv3). Got: 60",
            ],
        ),
        (
            "v3_interval_over_40s",
            base_plus("          advertIntervalSeconds: 41\ncplb:\n  vrrpVersion: 3\n"),
            vec![
                "F:11:34: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].advertIntervalSeconds: AdvertIntervalSeconds must be in the range of 1-40 for VRRPv3, which carries at most 40.95 s (cplb.vrrpVersion is 3). Got: 41",
            ],
        ),
        (
            "cplb_under_spec_and_disabled",
            base_with("enabled: true", "enabled: false").replacen(
                "spec:\n",
                "spec:\n  cplb:\n    priority: 150\n",
                1,
            ),
            vec![
                "F:3:5: warning: spec.cplb: ignored: `cplb` belongs at the top level of the document, beside `spec`",
                "F:6:16: spec.network.controlPlaneLoadBalancing.enabled: is false, so cplb has nothing to run (set enabled: true)",
            ],
        ),
        // ===== cross-field =====
        (
            "duplicate_vrid",
            base_plus(
                "        - virtualIPs: [\"192.0.2.101/24\"]\n          authPass: secret\n          interface: eth0\n          virtualRouterID: 51\n",
            ),
            vec![
                "F:14:28: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[1].virtualRouterID: VirtualRouterID 51 is already used by vrrpInstances[0] (line 8) on interface eth0",
            ],
        ),
        (
            "duplicate_vrid_after_invalid_instance",
            base_with("192.0.2.100/24", "192.0.2.100")
                + "        - virtualIPs: [\"192.0.2.101/24\"]\n          authPass: secret\n          interface: eth0\n          virtualRouterID: 60\n        - virtualIPs: [\"192.0.2.102/24\"]\n          authPass: secret\n          interface: eth0\n          virtualRouterID: 60\n        - virtualIPs: [\"192.0.2.103/24\"]\n          authPass: secret\n          interface: eth0\n          virtualRouterID: 60\n",
            vec![
                "F:8:24: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualIPs[0]: VirtualIPs must be a CIDR. Got: 192.0.2.100",
                "F:18:28: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[2].virtualRouterID: VirtualRouterID 60 is already used by vrrpInstances[1] (line 14) on interface eth0",
                "F:22:28: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[3].virtualRouterID: VirtualRouterID 60 is already used by vrrpInstances[1] (line 14) on interface eth0",
            ],
        ),
        (
            "three_hundred_instances",
            many_instances(300),
            vec![
                "F:622:11: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[205].virtualRouterID: automatic virtualRouterIDs exceeded, specify them explicitly (instance i gets 51 + i, and a VRID is at most 255) (and 94 more like it, up to vrrpInstances[299].virtualRouterID)",
            ],
        ),
        (
            "api_port_is_proxy_port",
            format!("spec:\n  api:\n    port: 6444\n{}", &BASE[6..]),
            vec![
                "F:3:11: spec.api.port: UserSpaceProxyPort must differ from the API port 6444 (userSpaceProxyBindPort is 6444 when not set)",
            ],
        ),
        (
            "proxy_port_is_admin_port",
            base_plus("        userSpaceProxyBindPort: 9440\n"),
            vec![
                "F:11:33: spec.network.controlPlaneLoadBalancing.keepalived.userSpaceProxyBindPort: userSpaceProxyBindPort 9440 is also the port of cplb.adminAddress (127.0.0.1:9440, the default); give one of them another port",
            ],
        ),
        (
            "mixed_families",
            base_with(
                "\"192.0.2.100/24\"",
                "\"192.0.2.100/24\", \"2001:db8::100/64\"",
            ),
            vec![
                "F:8:42: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualIPs[1]: VirtualIPs of one instance must all be IPv4 or all be IPv6 (VRRP runs one family per instance). Got: 2001:db8::100/64",
            ],
        ),
        // ===== VIPs that cannot be VIPs =====
        (
            "vip_unspecified",
            base_with("192.0.2.100/24", "0.0.0.0/0"),
            vec![
                "F:8:24: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualIPs[0]: VirtualIPs must be usable addresses: 0.0.0.0/0 has prefix length 0 (write the subnet's prefix, such as /24, or /32)",
            ],
        ),
        (
            "vip_prefix_zero",
            base_with("192.0.2.100/24", "192.0.2.100/0"),
            vec![
                "F:8:24: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualIPs[0]: VirtualIPs must be usable addresses: 192.0.2.100/0 has prefix length 0 (write the subnet's prefix, such as /24, or /32)",
            ],
        ),
        (
            "vip_loopback",
            base_with("192.0.2.100/24", "127.0.0.1/8"),
            vec![
                "F:8:24: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualIPs[0]: VirtualIPs must be usable addresses: 127.0.0.1/8 is a loopback address",
            ],
        ),
        (
            "vip_multicast",
            base_with("192.0.2.100/24", "224.0.0.18/32"),
            vec![
                "F:8:24: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualIPs[0]: VirtualIPs must be usable addresses: 224.0.0.18/32 is a multicast address",
            ],
        ),
        (
            "vip_link_local",
            base_with("192.0.2.100/24", "169.254.10.1/16"),
            vec![
                "F:8:24: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualIPs[0]: VirtualIPs must be usable addresses: 169.254.10.1/16 is an IPv4 link-local address (169.254.0.0/16), which is not routed",
            ],
        ),
        (
            "vip_twice_in_one_instance",
            base_with(
                "\"192.0.2.100/24\"",
                "\"192.0.2.100/24\", \"192.0.2.100/32\"",
            ),
            vec![
                "F:8:42: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualIPs[1]: VirtualIP 192.0.2.100 is listed twice: also vrrpInstances[0].virtualIPs[0] (line 8)",
            ],
        ),
        (
            "vip_in_two_instances",
            base_plus(
                "        - virtualIPs: [\"192.0.2.100/24\"]\n          authPass: secret\n          interface: eth0\n",
            ),
            vec![
                "F:11:24: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[1].virtualIPs[0]: VirtualIP 192.0.2.100 is listed twice: also vrrpInstances[0].virtualIPs[0] (line 8)",
            ],
        ),
        (
            "vip_is_unicast_source",
            base_plus(
                "          unicastSourceIP: 192.0.2.100\n          unicastPeers: [192.0.2.12]\n",
            ),
            vec![
                "F:8:24: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualIPs[0]: VirtualIP 192.0.2.100 is a controller's own address (vrrpInstances[0].unicastSourceIP (line 11)); the VIP must be an address no node has",
            ],
        ),
        (
            "vip_is_a_peer",
            base_plus(
                "          unicastSourceIP: 192.0.2.11\n          unicastPeers: [192.0.2.100]\n",
            ),
            vec![
                "F:8:24: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualIPs[0]: VirtualIP 192.0.2.100 is a controller's own address (vrrpInstances[0].unicastPeers[0] (line 12)); the VIP must be an address no node has",
            ],
        ),
        // ===== this host =====
        (
            "vip_is_this_nodes_address",
            base_with("192.0.2.100/24", "192.0.2.11/24"),
            vec![
                "F:8:24: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].virtualIPs[0]: VirtualIP 192.0.2.11 is already a permanent address of eth0 on this host: cplb would remove it when handing the VIP over; the VIP must be an address no node has",
            ],
        ),
        (
            "interface_typo",
            base_with("interface: eth0", "interface: eht0"),
            vec![
                "F:10:22: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].interface: interface eht0 not found on this host",
            ],
        ),
        (
            "interface_without_address",
            base_with("interface: eth0", "interface: bare0"),
            vec![
                "F:10:22: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].interface: interface bare0 has no IPv4 address to send adverts from",
            ],
        ),
        (
            "interface_unknown_mac",
            base_with("interface: eth0", "interface: \"02:00:00:00:99:99\""),
            vec![
                "F:10:22: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].interface: failed to get NIC for MAC address 02:00:00:00:99:99: interface with MAC address 02:00:00:00:99:99 not found",
            ],
        ),
        (
            "interface_name_impossible",
            base_with("interface: eth0", "interface: \"eth0; rm -rf /\""),
            vec![
                "F:10:22: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].interface: \"eth0; rm -rf /\" cannot be an interface name (at most 15 characters, no '/', ':' or spaces); write a name such as eth0, a MAC address, or nothing for the default route's interface",
            ],
        ),
        // ===== cplb.advertInterval =====
        (
            "advert_interval_on_vrrpv2",
            base_plus("cplb:\n  advertInterval: 100ms\n"),
            vec![
                "F:12:19: cplb.advertInterval: advertInterval (100ms) needs VRRPv3, whose adverts carry centiseconds (RFC 5798 §5.2.7), but vrrpInstances[0] runs VRRPv2 (IPv4 with cplb.vrrpVersion 2), whose adverts carry whole seconds (RFC 3768 §5.3.7). Set cplb.vrrpVersion: 3 on every controller (a cluster that still has keepalived controllers speaking VRRPv2, as k0s renders IPv4 instances, cannot use it), or use advertIntervalSeconds",
            ],
        ),
        (
            "advert_interval_not_centiseconds",
            base_plus("cplb:\n  vrrpVersion: 3\n  advertInterval: 125ms\n"),
            vec![
                "F:13:19: cplb.advertInterval: advertInterval must be a whole number of centiseconds, the unit VRRPv3 adverts carry (RFC 5798 §5.2.7): the nearest valid value is 130ms. Got: 125ms",
            ],
        ),
        (
            "advert_interval_below_a_centisecond",
            base_plus("cplb:\n  vrrpVersion: 3\n  advertInterval: 5ms\n"),
            vec![
                "F:13:19: cplb.advertInterval: advertInterval must be from 10ms to 40.95s: VRRPv3 carries 12 bits of centiseconds (RFC 5798 §5.2.7), and 10ms is also the shortest keepalived accepts. Got: 5ms",
            ],
        ),
        (
            "rise_of_a_century",
            base_plus("cplb:\n  health:\n    rise: 100000000h\n"),
            vec![
                "F:13:11: cplb.health.rise: rise must be a duration from 0s to 24h like 3s. Got: 100000000h",
            ],
        ),
    ]
}

fn run_in(lab: &Lab, host: &Host, args: &[&str], file: &Path) -> Output {
    let mut cmd = lab.command_in(&host.netns, CPLB);
    cmd.args(args).arg(file);
    cmd.env_remove("NOTIFY_SOCKET").env("CPLB_LOG", "warn");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let id = lab.spawn(cmd).unwrap();
    // A refused configuration exits at once; one that starts is a failure
    // of the case (killed when the wait runs out).
    match lab.wait_child(id, Duration::from_secs(20)) {
        Ok(output) => output,
        Err(e) => panic!("cplb {args:?} {} did not exit: {e}", file.display()),
    }
}

/// Whether a problem line is one `run` waits for rather than refuses: an
/// interface or an address this host has not got yet.
fn host_not_ready(line: &str) -> bool {
    line.contains("not found on this host") || line.contains("to send adverts from")
}

/// `cplb run` on `file` keeps running, its admin endpoint answering
/// `/readyz` 503, and stops cleanly on SIGTERM.
fn run_waits(lab: &Lab, host: &Host, file: &Path) -> Result<(), String> {
    let mut cmd = lab.command_in(&host.netns, CPLB);
    cmd.args(["run", "--config"]).arg(file);
    cmd.env_remove("NOTIFY_SOCKET").env("CPLB_LOG", "warn");
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let id = lab.spawn(cmd).map_err(|e| e.to_string())?;
    let not_ready = cplb_e2e::wait_until("/readyz to answer 503", Duration::from_secs(20), || {
        lab.exec_in(
            &host.netns,
            "curl",
            [
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "2",
                "http://127.0.0.1:9440/readyz",
            ],
        )
        .is_ok_and(|out| out.stdout == b"503")
    });
    lab.signal(id, nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| e.to_string())?;
    let out = lab
        .wait_child(id, Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    not_ready.map_err(|e| {
        format!(
            "run did not wait: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "run exited {:?} on SIGTERM while waiting",
            out.status
        ));
    }
    Ok(())
}

/// The lines of stderr about `file` (log lines left out).
fn lines_about(output: &Output, file: &Path) -> Vec<String> {
    let name = file.display().to_string();
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| l.starts_with(&name))
        .map(|l| l.replacen(&name, "F", 1))
        .collect()
}

#[test]
fn validate_and_run_refuse_each_broken_configuration_with_the_same_message() {
    let mut lab = Lab::new().unwrap();
    let host = lab
        .add_host("c1", Some("192.0.2.11/24"), Some("2001:db8::11/64"))
        .unwrap();
    // An interface without any address (one end of a veth pair of ours).
    lab.exec_in(
        &host.netns,
        "ip",
        [
            "link", "add", "bare0", "type", "veth", "peer", "name", "bare1",
        ],
    )
    .unwrap();
    lab.exec_in(&host.netns, "ip", ["link", "set", "bare0", "up"])
        .unwrap();
    let scratch = Scratch::new("broken");
    let bless = std::env::var_os("CPLB_BLESS").is_some();
    let cases = cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, document, want) in &cases {
        let file = scratch.path(&format!("{name}.yaml"));
        std::fs::write(&file, document).unwrap();
        let validate = run_in(&lab, &host, &["validate"], &file);
        let got = lines_about(&validate, &file);
        if bless {
            println!("== {name} (exit {:?})", validate.status.code());
            for line in &got {
                println!("            {line:?},");
            }
            continue;
        }
        if got != *want {
            failures.push(format!(
                "{name}: validate said\n  {}\nwanted\n  {}",
                got.join("\n  "),
                want.join("\n  ")
            ));
            continue;
        }
        if validate.status.code() != Some(1) {
            failures.push(format!("{name}: validate exited {:?}", validate.status));
        }
        if want.iter().all(|line| host_not_ready(line)) {
            // Not refused: `run` waits for the interface or address
            // (issue 14 F5), not ready meanwhile.
            if let Err(e) = run_waits(&lab, &host, &file) {
                failures.push(format!("{name}: {e}"));
            }
            continue;
        }
        let run = run_in(&lab, &host, &["run", "--config"], &file);
        let run_lines = lines_about(&run, &file);
        if run_lines != got {
            failures.push(format!(
                "{name}: run said\n  {}\nvalidate said\n  {}",
                run_lines.join("\n  "),
                got.join("\n  ")
            ));
        }
        if run.status.code() != Some(78) {
            failures.push(format!(
                "{name}: run exited {:?}: {}",
                run.status,
                String::from_utf8_lossy(&run.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every configuration the docs and the package ship gets the same verdict
/// from `validate` and `run`: refused by both with the same lines, or
/// accepted by validate and then running (ready, then a clean stop).
#[test]
fn every_shipped_configuration_gets_the_same_verdict_from_validate_and_run() {
    let mut lab = Lab::new().unwrap();
    let host = lab
        .add_host("c1", Some("192.0.2.11/24"), Some("2001:db8::11/64"))
        .unwrap();
    // Examples that leave `interface` empty use the default route's.
    lab.exec_in(
        &host.netns,
        "ip",
        ["route", "add", "default", "via", "192.0.2.1"],
    )
    .unwrap();
    let scratch = Scratch::new("shipped");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = vec![(
        "packaging".to_owned(),
        std::fs::read_to_string(root.join("packaging/config.yaml")).unwrap(),
    )];
    for doc in [
        "docs/configuration.md",
        "docs/migration-from-k0s.md",
        "docs/troubleshooting.md",
    ] {
        for (i, block) in yaml_blocks(&std::fs::read_to_string(root.join(doc)).unwrap())
            .into_iter()
            .enumerate()
        {
            files.push((
                format!(
                    "{}-{i}",
                    doc.trim_start_matches("docs/").trim_end_matches(".md")
                ),
                block,
            ));
        }
    }
    assert!(files.len() >= 4, "{} configurations", files.len());
    let (mut ran, mut refused) = (0, 0);
    for (name, text) in &files {
        let file = scratch.path(&format!("{name}.yaml"));
        // Leave the kubeconfig out of it: a missing one is retried.
        std::fs::write(&file, text).unwrap();
        let validate = run_in(&lab, &host, &["validate"], &file);
        let said = lines_about(&validate, &file);
        if validate.status.success() {
            // `cplb config` says what will run here.
            let shown = run_in(&lab, &host, &["config"], &file);
            let shown = String::from_utf8_lossy(&shown.stdout);
            assert!(
                shown.contains("# What runs on this host:"),
                "{name}: {shown}"
            );
            let mut cmd = lab.command_in(&host.netns, CPLB);
            cmd.args(["run", "--config"]).arg(&file);
            cmd.env_remove("NOTIFY_SOCKET").env("CPLB_LOG", "warn");
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            let agent = lab.spawn(cmd).unwrap();
            cplb_e2e::wait_until(
                &format!("{name} to be ready"),
                Duration::from_secs(20),
                || {
                    let mut status = lab.command_in(&host.netns, CPLB);
                    status.args(["status", "--json", "--config"]).arg(&file);
                    status.output().is_ok_and(|out| {
                        serde_json::from_slice::<serde_json::Value>(&out.stdout)
                            .is_ok_and(|report| report["ready"] == true)
                    })
                },
            )
            .unwrap_or_else(|e| panic!("{name}: validate said ok, run is not ready: {e}\n{text}"));
            lab.signal(agent, nix::sys::signal::Signal::SIGTERM)
                .unwrap();
            let stopped = lab.wait_child(agent, Duration::from_secs(20)).unwrap();
            assert!(stopped.status.success(), "{name}: {stopped:?}");
            ran += 1;
        } else {
            let run = run_in(&lab, &host, &["run", "--config"], &file);
            assert_eq!(run.status.code(), Some(78), "{name}: {run:?}");
            assert_eq!(lines_about(&run, &file), said, "{name}");
            refused += 1;
        }
    }
    println!("ran {ran}, refused {refused} of {}", files.len());
    // The package ships disabled; the docs show working examples.
    assert!(ran >= 3 && refused >= 1, "ran {ran}, refused {refused}");
}

/// `--host none` checks a file written for another controller: what needs
/// a host (a MAC address, the VIP against this node's addresses) is left
/// out, with a warning where something stays unresolved; on this host the
/// same file is refused.
#[test]
fn host_none_checks_a_file_for_another_controller() {
    let mut lab = Lab::new().unwrap();
    let host = lab.add_host("c1", Some("192.0.2.11/24"), None).unwrap();
    let scratch = Scratch::new("host-none");
    let file = scratch.path("other.yaml");
    // Another controller's MAC; a VIP that is c1's own address.
    std::fs::write(
        &file,
        base_with("interface: eth0", "interface: \"02:00:00:00:77:77\"").replacen(
            "192.0.2.100/24",
            "192.0.2.11/24",
            1,
        ),
    )
    .unwrap();
    let elsewhere = run_in(&lab, &host, &["validate", "--host", "none"], &file);
    assert_eq!(elsewhere.status.code(), Some(0), "{elsewhere:?}");
    assert_eq!(
        lines_about(&elsewhere, &file),
        [
            "F:10:22: warning: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].interface: 02:00:00:00:77:77: the interface with this MAC address; not resolved or checked (no host)"
        ]
    );
    let here = run_in(&lab, &host, &["validate"], &file);
    assert_eq!(here.status.code(), Some(1), "{here:?}");
    assert_eq!(
        lines_about(&here, &file),
        [
            "F:10:22: spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].interface: failed to get NIC for MAC address 02:00:00:00:77:77: interface with MAC address 02:00:00:00:77:77 not found"
        ]
    );
}
