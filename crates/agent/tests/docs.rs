//! The configuration reference (`docs/configuration.md`) and the shipped
//! example (`packaging/config.yaml`) checked against the parser.
//!
//! The parser's field lists are not copied here: they are read from the
//! parser itself. Every section of ours rejects unknown keys, and serde's
//! error for one names every key the section accepts, so the test puts a
//! probe key into each section and reads the accepted keys from the error,
//! discovering nested sections the same way. The reference must have one
//! table per section (a heading naming the section's path in backticks,
//! then rows whose first cell is a key in backticks) with exactly those keys.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use cplb::config::{self, ConfigError, Host};
use serde_json::{Value, json};

#[path = "support/markdown.rs"]
mod markdown;
use markdown::yaml_blocks;

const PROBE: &str = "cplbDocsProbe";

/// A machine with `eth0` on the default route, so examples that leave
/// `interface` empty or name a MAC validate anywhere.
struct FakeHost;

impl Host for FakeHost {
    fn default_interface(&self) -> Result<String, String> {
        Ok("eth0".to_string())
    }
    fn interfaces(&self) -> Result<Vec<(String, [u8; 6])>, String> {
        Ok(vec![("eth0".to_string(), [0x02, 0, 0, 0, 0, 0x01])])
    }
}

fn repo_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// One step of a section's path: a map key, or "every element of a list".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Key(String),
    Each,
}

fn display(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(key) if out.is_empty() => out.push_str(key),
            Step::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Step::Each => out.push_str("[]"),
        }
    }
    out
}

/// A document with `leaf` at `path`.
fn document(path: &[Step], leaf: Value) -> Value {
    path.iter().rev().fold(leaf, |inner, step| match step {
        Step::Key(key) => json!({ key.as_str(): inner }),
        Step::Each => json!([inner]),
    })
}

/// The keys the section at `path` accepts, or `None` if the parser does not
/// treat it as a section that rejects unknown keys.
fn accepted_keys(path: &[Step]) -> Option<BTreeSet<String>> {
    // JSON is YAML: the parser reads it as written.
    let text = document(path, json!({ PROBE: 1 })).to_string();
    let Err(ConfigError::Syntax(problem)) = config::parse(&text, &FakeHost) else {
        return None;
    };
    let message = problem.message;
    // serde-saphyr: "unknown field `x`, expected one of a, b, c" (plain
    // serde puts each name in backticks; accept both).
    let marker = format!("unknown field `{PROBE}`, expected ");
    let start = message.find(&marker)? + marker.len();
    let list = message[start..].lines().next().unwrap_or_default();
    let list = list.strip_prefix("one of ").unwrap_or(list);
    Some(
        list.split([',', ' '])
            .map(|name| name.trim_matches('`'))
            .filter(|name| !name.is_empty() && *name != "or")
            .map(str::to_string)
            .collect(),
    )
}

/// Every section below the roots, with its keys, as the parser sees them.
fn parser_schema() -> BTreeMap<String, BTreeSet<String>> {
    let roots = [
        vec![
            Step::Key("spec".into()),
            Step::Key("network".into()),
            Step::Key("controlPlaneLoadBalancing".into()),
        ],
        vec![Step::Key("cplb".into())],
    ];
    let mut schema = BTreeMap::new();
    let mut todo: Vec<Vec<Step>> = roots.to_vec();
    // Bounded: the configuration is a handful of sections deep.
    for _ in 0..100 {
        let Some(path) = todo.pop() else {
            return schema;
        };
        let keys = accepted_keys(&path)
            .unwrap_or_else(|| panic!("{} does not reject unknown keys", display(&path)));
        for key in &keys {
            let mut child = path.clone();
            child.push(Step::Key(key.clone()));
            if accepted_keys(&child).is_some() {
                todo.push(child.clone());
            }
            child.push(Step::Each);
            if accepted_keys(&child).is_some() {
                todo.push(child);
            }
        }
        schema.insert(display(&path), keys);
    }
    panic!("more than 100 sections: the discovery does not terminate");
}

/// The reference's tables: section path → keys, from
/// "## … `path` …" headings and "| `key` | …" rows.
fn documented_schema(markdown: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut schema: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut in_code = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if line.starts_with('#') {
            section = line.split('`').nth(1).map(str::to_string);
            continue;
        }
        let Some(row) = line.strip_prefix('|') else {
            continue;
        };
        let first = row.split('|').next().unwrap_or_default().trim();
        if let (Some(section), Some(key)) = (&section, first.strip_prefix('`'))
            && let Some(key) = key.strip_suffix('`')
        {
            schema
                .entry(section.clone())
                .or_default()
                .insert(key.to_string());
        }
    }
    schema
}

#[test]
fn the_probe_reads_the_accepted_keys() {
    // Guards the mechanism the other tests rely on.
    let keys = accepted_keys(&[Step::Key("cplb".into())]).unwrap();
    assert!(
        keys.contains("vrrpVersion") && keys.contains("kubeconfig"),
        "{keys:?}"
    );
    assert!(!keys.contains(PROBE));
    let scalar = [Step::Key("cplb".into()), Step::Key("priority".into())];
    assert_eq!(accepted_keys(&scalar), None);
}

#[test]
fn configuration_reference_lists_exactly_the_keys_the_parser_accepts() {
    let parser = parser_schema();
    let doc = documented_schema(&repo_file("docs/configuration.md"));
    let sections: BTreeSet<&String> = parser.keys().chain(doc.keys()).collect();
    let mut problems = Vec::new();
    for section in sections {
        let code = parser.get(section).cloned().unwrap_or_default();
        let documented = doc.get(section).cloned().unwrap_or_default();
        for key in code.difference(&documented) {
            problems.push(format!(
                "{section}.{key}: accepted by the parser, not in the reference"
            ));
        }
        for key in documented.difference(&code) {
            problems.push(format!(
                "{section}.{key}: in the reference, not accepted by the parser"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md:\n{}",
        problems.join("\n")
    );
}

/// Every key `cplb config` prints, at any depth.
fn keys_of(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                out.insert(key.clone());
                keys_of(inner, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| keys_of(v, out)),
        _ => {}
    }
}

/// Every section and key set, virtual servers included (which `cplb run`
/// refuses, but `cplb config` prints).
const EVERYTHING: &str = r#"
spec:
  api: {port: 6443}
  network:
    controlPlaneLoadBalancing:
      enabled: true
      type: Keepalived
      keepalived:
        vrrpInstances:
          - virtualIPs: ["192.0.2.100/24"]
            interface: eth0
            virtualRouterID: 51
            advertIntervalSeconds: 1
            authPass: secret
            unicastSourceIP: 192.0.2.11
            unicastPeers: [192.0.2.12]
            addressLabel: 10000
        virtualServers:
          - ipAddress: 192.0.2.100
            delayLoop: 1m
            lbAlgo: rr
            lbKind: DR
            persistenceTimeoutSeconds: 360
        userSpaceProxyBindPort: 6444
        disableLoadBalancer: false
        configTemplateVRRP: ""
        configTemplateVS: ""
cplb:
  vrrpVersion: 3
  priority: 200
  advertInterval: 1s
  adminAddress: "127.0.0.1:9440"
  netfilter: iptables
  outputRule: true
  kubeconfig: /var/lib/k0s/pki/admin.conf
  health: {enabled: true, degradedPriority: 100, fall: 3s, rise: 10s}
"#;

#[test]
fn configuration_reference_explains_every_key_cplb_config_prints() {
    let doc = repo_file("docs/configuration.md");
    let config = config::parse(EVERYTHING, &FakeHost).unwrap();
    let printed: Value = serde_saphyr::from_str(&config.to_yaml()).unwrap();
    let mut keys = BTreeSet::new();
    keys_of(&printed, &mut keys);
    assert!(keys.len() > 20, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?}"
    );
}

#[test]
fn the_full_example_sets_every_key_the_parser_accepts() {
    // Keeps EVERYTHING (and so the test above) complete as fields are added.
    let mut set = BTreeSet::new();
    keys_of(
        &serde_saphyr::from_str::<Value>(EVERYTHING).unwrap(),
        &mut set,
    );
    let missing: Vec<String> = parser_schema()
        .into_iter()
        .flat_map(|(section, keys)| keys.into_iter().map(move |k| (section.clone(), k)))
        .filter(|(_, key)| !set.contains(key))
        .map(|(section, key)| format!("{section}.{key}"))
        .collect();
    assert!(missing.is_empty(), "add to EVERYTHING: {missing:?}");
}

#[test]
fn every_yaml_example_in_the_docs_is_a_valid_configuration() {
    let mut checked = 0;
    for file in [
        "docs/configuration.md",
        "docs/migration-from-k0s.md",
        "docs/troubleshooting.md",
        "docs/ipvs.md",
    ] {
        for (i, block) in yaml_blocks(&repo_file(file)).iter().enumerate() {
            if let Err(e) = config::parse(block, &FakeHost) {
                panic!("{file}, yaml block {i}: {e}\n{block}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} yaml blocks found");
}

#[test]
fn the_packaged_example_config_is_valid_and_harmless() {
    let config = config::parse(&repo_file("packaging/config.yaml"), &FakeHost).unwrap();
    // Installed and started before anyone edits it: it must not take a VIP.
    assert!(!config.enabled);
    assert!(!config.vrrp_instances.is_empty());
    // Its VIP is a documentation address, never a real one.
    let vip = config.vrrp_instances[0].virtual_ips[0].addr().to_string();
    assert!(vip.starts_with("192.0.2."), "{vip}");
}

/// `Key=value` lines of a systemd unit, in order (repeated keys kept).
fn unit_directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_systemd_unit_runs_and_releases_the_packaged_config() {
    let unit = unit_directives(&repo_file("packaging/cplb.service"));
    let get = |key: &str| -> Vec<&str> {
        unit.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let config = cplb::manifest::DEFAULT_CONFIG_PATH;
    assert_eq!(get("Type"), ["notify"]);
    assert_eq!(get("Restart"), ["always"]);
    assert_eq!(
        get("ExecStart"),
        [format!("/usr/bin/cplb run --config {config}")]
    );
    assert_eq!(
        get("ExecStopPost"),
        [format!("/usr/bin/cplb release --config {config}")]
    );
    assert_eq!(get("KillSignal"), ["SIGTERM"]);
    assert!(
        get("After")[0]
            .split(' ')
            .any(|u| u == "network-online.target")
    );
    assert_eq!(get("AmbientCapabilities"), ["CAP_NET_ADMIN CAP_NET_RAW"]);
    assert_eq!(get("CapabilityBoundingSet"), get("AmbientCapabilities"));
    assert_eq!(get("WatchdogSec").len(), 1);
    assert_eq!(get("TimeoutStopSec").len(), 1);
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let available = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // verify insists that the binaries exist; /bin/true stands in for cplb.
    let dir = std::env::temp_dir().join(format!("cplb-unit-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cplb.service");
    let unit = repo_file("packaging/cplb.service").replace("/usr/bin/cplb", "/bin/true");
    fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only complaints about our unit count (not about the host's units).
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("cplb")).collect();
    assert!(out.status.success() && ours.is_empty(), "{stderr}");
}

#[test]
fn the_deb_assets_exist() {
    let manifest =
        fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    for asset in [
        "../../packaging/config.yaml",
        "../../README.md",
        "../../packaging",
        "../../deploy/rbac.yaml",
    ] {
        assert!(
            manifest.contains(&format!("\"{asset}")),
            "{asset} not in the deb metadata"
        );
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(asset);
        assert!(path.exists(), "{}", path.display());
    }
    for doc in [
        "configuration.md",
        "troubleshooting.md",
        "migration-from-k0s.md",
    ] {
        assert!(repo_file(&format!("docs/{doc}")).starts_with("# "), "{doc}");
    }
}
