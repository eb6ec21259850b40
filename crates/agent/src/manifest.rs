//! `cplb manifest`: a static Pod for kubeadm-style clusters, where the
//! kubelet runs whatever sits in `/etc/kubernetes/manifests` (kube-vip is
//! deployed the same way).
//!
//! The Pod is built from `k8s-openapi` types and serialised with serde, so
//! every field name is the API's own. It runs on the host network with
//! `NET_ADMIN` and `NET_RAW` only, mounts the configuration, the kubeconfig
//! the configuration names and the iptables lock file, and probes the admin
//! endpoint's `/healthz` and `/readyz`.
//!
//! `cplb manifest [--config FILE] [--image IMAGE]` is, in `main.rs`:
//!
//! ```text
//! let mut opts = match config {          // Option<PathBuf>
//!     Some(path) => ManifestOptions::for_config(&config::load(&path, &SystemHost)?, path.display().to_string()),
//!     None => ManifestOptions::default(),
//! };
//! if let Some(image) = image { opts.image = image; }
//! print!("{}", manifest::static_pod(&opts)?);
//! ```
//!
//! `cplb manifest --rbac` prints instead the RBAC objects of the
//! least-privilege identity [`RBAC_USER`] ([`rbac`]; the same text ships as
//! `deploy/rbac.yaml`): what the reconciler needs and nothing more, so the
//! agent, which terminates untrusted TCP as root, need not hold the
//! cluster-admin `admin.conf` (issue 14, finding 13).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use k8s_openapi::api::core::v1::{
    Capabilities, Container, HTTPGetAction, HostPathVolumeSource, Pod, PodSpec, Probe,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::{Config, DEFAULT_ADMIN_ADDRESS, DEFAULT_KUBECONFIG};

/// Where `cplb run` reads its configuration by default (the Debian package's
/// conffile, and the path the manifest mounts it at).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/cplb/config.yaml";

/// The default image's repository: a reserved name (RFC 2606), so a
/// manifest nobody edited fails to pull instead of pulling someone else's
/// image.
pub const PLACEHOLDER_IMAGE: &str = "registry.example.invalid/cplb";

/// The iptables lock, shared with kube-proxy and every other iptables user
/// on the host; without it concurrent `iptables` runs can fail.
const XTABLES_LOCK: &str = "/run/xtables.lock";

/// What the static Pod is made of. [`Default`] gives the standard layout;
/// [`ManifestOptions::for_config`] takes the kubeconfig and the admin
/// address from a loaded configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestOptions {
    /// Container image with `cplb` (and `iptables`/`nft`) on its `PATH`.
    /// The default, [`PLACEHOLDER_IMAGE`] tagged with this version, is a
    /// placeholder that cannot be pulled: override it.
    pub image: String,
    /// `imagePullPolicy`.
    pub image_pull_policy: String,
    /// Pod name; the kubelet appends the node name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Host path of the configuration, mounted read-only at the same path.
    pub config_path: String,
    /// Host path of the kubeconfig, mounted read-only at the same path: it
    /// must be the path the configuration's `cplb.kubeconfig` names.
    pub kubeconfig_path: String,
    /// The admin endpoint (`cplb.adminAddress`), which the probes call.
    pub admin_address: SocketAddr,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        ManifestOptions {
            image: format!("{PLACEHOLDER_IMAGE}:v{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".to_string(),
            name: "cplb".to_string(),
            namespace: "kube-system".to_string(),
            config_path: DEFAULT_CONFIG_PATH.to_string(),
            kubeconfig_path: DEFAULT_KUBECONFIG.to_string(),
            admin_address: DEFAULT_ADMIN_ADDRESS
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9440))),
        }
    }
}

impl ManifestOptions {
    /// The defaults, with the kubeconfig path and the admin address of
    /// `config` (read from `config_path`), so the mounts and probes match
    /// what the agent will use.
    pub fn for_config(config: &Config, config_path: impl Into<String>) -> Self {
        ManifestOptions {
            config_path: config_path.into(),
            kubeconfig_path: config.cplb.kubeconfig.clone(),
            admin_address: config.cplb.admin_address,
            ..ManifestOptions::default()
        }
    }
}

/// The address the kubelet's probes connect to: on the host network, the
/// admin address itself, or loopback when it listens on every address.
fn probe_host(admin: SocketAddr) -> IpAddr {
    match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

fn http_probe(opts: &ManifestOptions, path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            host: Some(probe_host(opts.admin_address).to_string()),
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(opts.admin_address.port())),
            scheme: Some("HTTP".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string(),
            type_: Some(kind.to_string()),
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// The static Pod as a typed object.
pub fn static_pod_object(opts: &ManifestOptions) -> Pod {
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "cplb".to_string()),
        ("component".to_string(), "cplb".to_string()),
        ("tier".to_string(), "control-plane".to_string()),
    ]);
    let container = Container {
        name: "cplb".to_string(),
        image: Some(opts.image.clone()),
        image_pull_policy: Some(opts.image_pull_policy.clone()),
        command: Some(vec![
            "cplb".to_string(),
            "run".to_string(),
            "--config".to_string(),
            opts.config_path.clone(),
        ]),
        security_context: Some(SecurityContext {
            // VIPs, raw VRRP sockets, GARP/NA and the REDIRECT rules; nothing else.
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]),
                drop: Some(vec!["ALL".to_string()]),
            }),
            allow_privilege_escalation: Some(false),
            ..SecurityContext::default()
        }),
        liveness_probe: Some(http_probe(opts, "/healthz", 10, 3)),
        readiness_probe: Some(http_probe(opts, "/readyz", 5, 1)),
        volume_mounts: Some(vec![
            mount("config", &opts.config_path, true),
            mount("kubeconfig", &opts.kubeconfig_path, true),
            mount("xtables-lock", XTABLES_LOCK, false),
        ]),
        ..Container::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(opts.name.clone()),
            namespace: Some(opts.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            host_network: Some(true),
            priority_class_name: Some("system-node-critical".to_string()),
            // Time for the graceful stop: priority-0 advert, then proxy drain.
            termination_grace_period_seconds: Some(30),
            containers: vec![container],
            volumes: Some(vec![
                host_path("config", &opts.config_path, "File"),
                host_path("kubeconfig", &opts.kubeconfig_path, "File"),
                host_path("xtables-lock", XTABLES_LOCK, "FileOrCreate"),
            ]),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The user the least-privilege kubeconfig authenticates as (its client
/// certificate's common name).
pub const RBAC_USER: &str = "cplb";

/// The name of the RBAC objects.
const RBAC_NAME: &str = "cplb";

/// Where the reconciler watches the `kubernetes` endpoints.
const ENDPOINTS_NAMESPACE: &str = "default";

fn names(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

fn rbac_metadata(namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(RBAC_NAME.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/name".to_owned(),
            "cplb".to_owned(),
        )])),
        ..ObjectMeta::default()
    }
}

fn rbac_subjects() -> Option<Vec<Subject>> {
    Some(vec![Subject {
        api_group: Some("rbac.authorization.k8s.io".to_owned()),
        kind: "User".to_owned(),
        name: RBAC_USER.to_owned(),
        namespace: None,
    }])
}

/// What the reconciler does with its kubeconfig, and nothing more: list and
/// watch the `kubernetes` EndpointSlices and Endpoints in `default` (a Role
/// there), and `GET /readyz` on each apiserver (a ClusterRole: non-resource
/// URLs exist only cluster-wide). API discovery (`/apis/discovery.k8s.io/v1`)
/// is open to every authenticated user through the built-in
/// `system:discovery` role.
pub fn rbac_objects() -> (Role, RoleBinding, ClusterRole, ClusterRoleBinding) {
    let verbs = || names(&["list", "watch"]).unwrap_or_default();
    let role = Role {
        metadata: rbac_metadata(Some(ENDPOINTS_NAMESPACE)),
        rules: Some(vec![
            PolicyRule {
                api_groups: names(&["discovery.k8s.io"]),
                resources: names(&["endpointslices"]),
                verbs: verbs(),
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: names(&[""]),
                resources: names(&["endpoints"]),
                verbs: verbs(),
                ..PolicyRule::default()
            },
        ]),
    };
    let role_binding = RoleBinding {
        metadata: rbac_metadata(Some(ENDPOINTS_NAMESPACE)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: RBAC_NAME.to_owned(),
        },
        subjects: rbac_subjects(),
    };
    let cluster_role = ClusterRole {
        metadata: rbac_metadata(None),
        rules: Some(vec![PolicyRule {
            non_resource_urls: names(&["/readyz"]),
            verbs: names(&["get"]).unwrap_or_default(),
            ..PolicyRule::default()
        }]),
        aggregation_rule: None,
    };
    let cluster_role_binding = ClusterRoleBinding {
        metadata: rbac_metadata(None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: RBAC_NAME.to_owned(),
        },
        subjects: rbac_subjects(),
    };
    (role, role_binding, cluster_role, cluster_role_binding)
}

/// [`rbac_objects`] as one YAML stream (`kubectl apply -f -`), the text of
/// `deploy/rbac.yaml`.
pub fn rbac() -> Result<String, ManifestError> {
    let (role, role_binding, cluster_role, cluster_role_binding) = rbac_objects();
    let yaml = |r: Result<String, serde_saphyr::SerializeError>| {
        r.map_err(|e| ManifestError(e.to_string()))
    };
    let documents = [
        yaml(serde_saphyr::to_string(&role))?,
        yaml(serde_saphyr::to_string(&role_binding))?,
        yaml(serde_saphyr::to_string(&cluster_role))?,
        yaml(serde_saphyr::to_string(&cluster_role_binding))?,
    ];
    let mut out = format!(
        "# RBAC for cplb's least-privilege kubeconfig (user {RBAC_USER:?}), generated by\n# `cplb manifest --rbac`; see docs/configuration.md (kubeconfig).\n"
    );
    for document in documents {
        out.push_str("---\n");
        out.push_str(&document);
    }
    Ok(out)
}

/// Whether `path` looks like a cluster-admin kubeconfig (k0s's or
/// kubeadm's `admin.conf`), which cplb should not need.
pub fn is_admin_kubeconfig(path: impl AsRef<std::path::Path>) -> bool {
    path.as_ref()
        .file_name()
        .is_some_and(|name| name == "admin.conf" || name == "super-admin.conf")
}

/// Why a manifest could not be rendered.
#[derive(Debug, thiserror::Error)]
#[error("cannot render the static pod manifest: {0}")]
pub struct ManifestError(String);

/// The static Pod as YAML, for `/etc/kubernetes/manifests/cplb.yaml`.
pub fn static_pod(opts: &ManifestOptions) -> Result<String, ManifestError> {
    serde_saphyr::to_string(&static_pod_object(opts)).map_err(|e| ManifestError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(opts: &ManifestOptions) -> (String, serde_json::Value) {
        let text = static_pod(opts).unwrap();
        let value: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        (text, value)
    }

    /// Issue 14, finding 13: exactly what the reconciler uses, for user
    /// `cplb`, and `deploy/rbac.yaml` is this very text.
    #[test]
    fn rbac_grants_exactly_what_the_reconciler_uses() {
        let text = rbac().unwrap();
        let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        let kinds: Vec<&str> = documents
            .iter()
            .map(|d| d["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"]
        );
        let json = |v: serde_json::Value| v;
        assert_eq!(documents[0]["metadata"]["namespace"], "default");
        assert_eq!(
            documents[0]["rules"],
            json(serde_json::json!([
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
                {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["list", "watch"]},
            ]))
        );
        assert_eq!(
            documents[2]["rules"],
            json(serde_json::json!([{"nonResourceURLs": ["/readyz"], "verbs": ["get"]}]))
        );
        for (binding, role_kind) in [(&documents[1], "Role"), (&documents[3], "ClusterRole")] {
            assert_eq!(binding["roleRef"]["kind"], role_kind);
            assert_eq!(binding["roleRef"]["name"], "cplb");
            assert_eq!(
                binding["subjects"],
                json(
                    serde_json::json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "cplb"}])
                )
            );
        }
        assert_eq!(documents[1]["metadata"]["namespace"], "default");
        assert!(!text.contains('*'), "{text}");
        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/rbac.yaml"
        ))
        .unwrap();
        assert_eq!(
            shipped, text,
            "deploy/rbac.yaml is stale: cplb manifest --rbac > deploy/rbac.yaml"
        );
    }

    #[test]
    fn admin_kubeconfigs_are_recognised() {
        assert!(is_admin_kubeconfig("/var/lib/k0s/pki/admin.conf"));
        assert!(is_admin_kubeconfig("/etc/kubernetes/admin.conf"));
        assert!(!is_admin_kubeconfig("/etc/cplb/kubeconfig"));
    }

    #[test]
    fn parses_back_into_the_same_pod() {
        let opts = ManifestOptions::default();
        let text = static_pod(&opts).unwrap();
        let pod: Pod = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(pod, static_pod_object(&opts));
    }

    #[test]
    fn is_a_host_network_system_critical_pod_in_kube_system() {
        let (_, pod) = parsed(&ManifestOptions::default());
        assert_eq!(pod["apiVersion"], "v1");
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["metadata"]["name"], "cplb");
        assert_eq!(pod["metadata"]["namespace"], "kube-system");
        assert_eq!(pod["spec"]["hostNetwork"], true);
        assert_eq!(pod["spec"]["priorityClassName"], "system-node-critical");
        let container = &pod["spec"]["containers"][0];
        assert_eq!(
            container["command"],
            serde_json::json!(["cplb", "run", "--config", "/etc/cplb/config.yaml"])
        );
        assert!(
            container["image"]
                .as_str()
                .unwrap()
                .ends_with(env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn adds_only_net_admin_and_net_raw() {
        let (_, pod) = parsed(&ManifestOptions::default());
        let caps = &pod["spec"]["containers"][0]["securityContext"]["capabilities"];
        assert_eq!(caps["add"], serde_json::json!(["NET_ADMIN", "NET_RAW"]));
        assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
        assert_eq!(
            pod["spec"]["containers"][0]["securityContext"]["privileged"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn mounts_config_and_kubeconfig_read_only_and_the_xtables_lock() {
        let opts = ManifestOptions {
            config_path: "/etc/kubernetes/cplb.yaml".to_string(),
            kubeconfig_path: "/etc/kubernetes/admin.conf".to_string(),
            ..ManifestOptions::default()
        };
        let (_, pod) = parsed(&opts);
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        let mounts = pod["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap();
        let find = |list: &[serde_json::Value], name: &str| {
            list.iter()
                .find(|v| v["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        for (name, path, kind, read_only) in [
            ("config", "/etc/kubernetes/cplb.yaml", "File", true),
            ("kubeconfig", "/etc/kubernetes/admin.conf", "File", true),
            ("xtables-lock", "/run/xtables.lock", "FileOrCreate", false),
        ] {
            let volume = find(volumes, name);
            assert_eq!(volume["hostPath"]["path"], path, "{name}");
            assert_eq!(volume["hostPath"]["type"], kind, "{name}");
            let mount = find(mounts, name);
            assert_eq!(mount["mountPath"], path, "{name}");
            assert_eq!(mount["readOnly"], read_only, "{name}");
        }
        assert_eq!(
            pod["spec"]["containers"][0]["command"][3],
            "/etc/kubernetes/cplb.yaml"
        );
    }

    #[test]
    fn probes_call_the_admin_endpoint() {
        let (_, pod) = parsed(&ManifestOptions::default());
        let container = &pod["spec"]["containers"][0];
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["host"], "127.0.0.1", "{probe}");
            assert_eq!(get["port"], 9440, "{probe}");
            assert_eq!(get["path"], path, "{probe}");
        }
    }

    #[test]
    fn takes_kubeconfig_and_admin_address_from_the_config() {
        let yaml = "spec:\n  network:\n    controlPlaneLoadBalancing:\n      enabled: true\n      keepalived:\n        vrrpInstances:\n          - virtualIPs: [192.0.2.100/24]\n            interface: eth0\n            authPass: secret\ncplb:\n  adminAddress: \"[::]:9555\"\n  kubeconfig: /etc/kubernetes/admin.conf\n";
        let config = crate::config::parse(yaml, &crate::config::SystemHost).unwrap();
        let opts = ManifestOptions::for_config(&config, "/etc/kubernetes/cplb.yaml");
        let (_, pod) = parsed(&opts);
        let container = &pod["spec"]["containers"][0];
        // An unspecified admin address is probed on loopback of its family.
        assert_eq!(container["livenessProbe"]["httpGet"]["host"], "::1");
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], 9555);
        assert_eq!(
            container["volumeMounts"][1]["mountPath"],
            "/etc/kubernetes/admin.conf"
        );
        assert_eq!(container["command"][3], "/etc/kubernetes/cplb.yaml");
    }
}
