//! The YAML as users write it: k0s's field names (several of which serde's
//! camelCase renaming would get wrong), every field optional, every leaf
//! [`Spanned`] so a problem can name its line and column.
//!
//! Outside `controlPlaneLoadBalancing` unknown fields are ignored (a k0s.yaml
//! has many sections cplb does not read); inside it and in our own `cplb`
//! section they are errors, so a misspelt key is reported, not ignored.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

/// A k0s `ClusterConfig`, a k0sctl `Cluster`, or a document with just
/// `spec.network.controlPlaneLoadBalancing`.
#[derive(Debug, Deserialize)]
pub(crate) struct Document {
    #[serde(rename = "apiVersion", default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub spec: Option<Spanned<Spec>>,
    /// cplb's own settings, beside the k0s document.
    #[serde(default)]
    pub cplb: Option<Spanned<Settings>>,
    /// Misplaced: `network` belongs under `spec`.
    #[serde(default)]
    pub network: Option<Spanned<IgnoredAny>>,
}

/// `spec` of a ClusterConfig (api, network) or of a k0sctl Cluster (k0s).
#[derive(Debug, Deserialize)]
pub(crate) struct Spec {
    #[serde(default)]
    pub api: Option<Api>,
    #[serde(default)]
    pub network: Option<Spanned<Network>>,
    /// k0sctl: `spec.k0s.config` holds a whole ClusterConfig.
    #[serde(default)]
    pub k0s: Option<K0sctlK0s>,
    /// Misplaced: cplb's section is top-level, beside `spec`.
    #[serde(default)]
    pub cplb: Option<Spanned<IgnoredAny>>,
    /// Misplaced: belongs under `spec.network`.
    #[serde(rename = "controlPlaneLoadBalancing", default)]
    pub control_plane_load_balancing: Option<Spanned<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct K0sctlK0s {
    #[serde(default)]
    pub config: Option<Box<Document>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Api {
    #[serde(default)]
    pub port: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Network {
    #[serde(rename = "controlPlaneLoadBalancing", default)]
    pub control_plane_load_balancing: Option<Spanned<Cplb>>,
    /// Misplaced: cplb's section is top-level, beside `spec`.
    #[serde(default)]
    pub cplb: Option<Spanned<IgnoredAny>>,
    /// Misplaced: belongs under `controlPlaneLoadBalancing`.
    #[serde(default)]
    pub keepalived: Option<Spanned<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cplb {
    #[serde(default)]
    pub enabled: Option<Spanned<bool>>,
    #[serde(rename = "type", default)]
    pub kind: Option<Spanned<String>>,
    #[serde(default)]
    pub keepalived: Option<Spanned<Keepalived>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Keepalived {
    #[serde(rename = "vrrpInstances", default)]
    pub vrrp_instances: Option<Spanned<Vec<Spanned<VrrpInstance>>>>,
    #[serde(rename = "virtualServers", default)]
    pub virtual_servers: Option<Spanned<Vec<Spanned<VirtualServer>>>>,
    #[serde(rename = "userSpaceProxyBindPort", default)]
    pub user_space_proxy_bind_port: Option<Spanned<i64>>,
    #[serde(rename = "disableLoadBalancer", default)]
    pub disable_load_balancer: Option<Spanned<bool>>,
    #[serde(rename = "configTemplateVRRP", default)]
    pub config_template_vrrp: Option<Spanned<String>>,
    #[serde(rename = "configTemplateVS", default)]
    pub config_template_vs: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VrrpInstance {
    #[serde(rename = "virtualIPs", default)]
    pub virtual_ips: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub interface: Option<Spanned<String>>,
    #[serde(rename = "virtualRouterID", default)]
    pub virtual_router_id: Option<Spanned<i64>>,
    #[serde(rename = "advertIntervalSeconds", default)]
    pub advert_interval_seconds: Option<Spanned<i64>>,
    #[serde(rename = "authPass", default)]
    pub auth_pass: Option<Spanned<String>>,
    #[serde(rename = "unicastPeers", default)]
    pub unicast_peers: Option<Vec<Spanned<String>>>,
    #[serde(rename = "unicastSourceIP", default)]
    pub unicast_source_ip: Option<Spanned<String>>,
    #[serde(rename = "addressLabel", default)]
    pub address_label: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VirtualServer {
    #[serde(rename = "ipAddress", default)]
    pub ip_address: Option<Spanned<String>>,
    #[serde(rename = "delayLoop", default)]
    pub delay_loop: Option<Spanned<String>>,
    #[serde(rename = "lbAlgo", default)]
    pub lb_algo: Option<Spanned<String>>,
    #[serde(rename = "lbKind", default)]
    pub lb_kind: Option<Spanned<String>>,
    #[serde(rename = "persistenceTimeoutSeconds", default)]
    pub persistence_timeout_seconds: Option<Spanned<i64>>,
}

/// cplb's own section (not k0s's), top-level key `cplb`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    #[serde(rename = "vrrpVersion", default)]
    pub vrrp_version: Option<Spanned<i64>>,
    #[serde(default)]
    pub priority: Option<Spanned<i64>>,
    #[serde(rename = "advertInterval", default)]
    pub advert_interval: Option<Spanned<String>>,
    #[serde(rename = "adminAddress", default)]
    pub admin_address: Option<Spanned<String>>,
    #[serde(default)]
    pub netfilter: Option<Spanned<String>>,
    #[serde(default)]
    pub kubeconfig: Option<Spanned<String>>,
    #[serde(rename = "outputRule", default)]
    pub output_rule: Option<Spanned<bool>>,
    #[serde(default)]
    pub health: Option<HealthSettings>,
}

/// `cplb.health`: health-aware mastership.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthSettings {
    #[serde(default)]
    pub enabled: Option<Spanned<bool>>,
    #[serde(rename = "degradedPriority", default)]
    pub degraded_priority: Option<Spanned<i64>>,
    #[serde(default)]
    pub fall: Option<Spanned<String>>,
    #[serde(default)]
    pub rise: Option<Spanned<String>>,
}
