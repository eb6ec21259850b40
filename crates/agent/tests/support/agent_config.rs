//! The configuration file the netns agent tests give `cplb run`: a k0s
//! document for one controller with the VIP 192.0.2.100/24 on eth0, plus
//! our section.

use std::path::Path;

/// The VIP of [`write_config_with`]'s instance.
pub const VIP: &str = "192.0.2.100";

/// Writes the document to `path`; `keepalived` is added to the
/// `keepalived` block, `cplb` to our section.
pub fn write_config_with(path: &Path, kubeconfig: &Path, keepalived: &str, cplb: &str) {
    let text = format!(
        "spec:
  api:
    port: 6443
  network:
    controlPlaneLoadBalancing:
      enabled: true
      type: Keepalived
      keepalived:
        vrrpInstances:
          - virtualIPs: [\"{VIP}/24\"]
            authPass: agentpw
            interface: eth0
        userSpaceProxyBindPort: 6444
{keepalived}cplb:
  kubeconfig: {}
{cplb}",
        kubeconfig.display()
    );
    std::fs::write(path, text).unwrap();
}
