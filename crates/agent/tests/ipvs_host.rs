//! IPVS mode on the host's own kernel, in a network namespace: `cplb
//! validate` and `cplb run` agree on whether this kernel can run it. This
//! machine's kernel has no ip_vs: both refuse, with the same line (run with
//! exit 78) and nothing left behind. On a kernel with ip_vs, validate
//! accepts and `cplb config` describes the mode. (The mode itself is
//! tested in a VM: `ipvs_vm.rs`.)

use std::process::{Output, Stdio};

use cplb_e2e::Lab;

const CPLB: &str = env!("CARGO_BIN_EXE_cplb");

const CONFIG: &str = "spec:
  network:
    controlPlaneLoadBalancing:
      enabled: true
      keepalived:
        vrrpInstances:
        - virtualIPs: [\"192.0.2.100/24\"]
          authPass: secret
          interface: eth0
        virtualServers:
        - ipAddress: 192.0.2.100
cplb:
  kubeconfig: /nonexistent/admin.conf
";

fn cplb(lab: &Lab, netns: &str, args: &[&str]) -> Output {
    let mut cmd = lab.command_in(netns, CPLB);
    cmd.args(args)
        .env("CPLB_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.output().unwrap()
}

/// The stderr lines naming the file (the problems), without the note.
fn problems(out: &Output, file: &str) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with(file))
        .map(str::to_owned)
        .collect()
}

#[test]
fn validate_and_run_agree_on_whether_this_kernel_has_ipvs() {
    let mut lab = Lab::new().unwrap();
    let host = lab.add_host("c1", Some("192.0.2.11/24"), None).unwrap();
    let dir = std::env::temp_dir().join(format!("cplb-ipvs-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ipvs.yaml");
    std::fs::write(&file, CONFIG).unwrap();
    let name = file.display().to_string();
    let lock = dir.join("cplb.lock").display().to_string();
    // /proc/net/ip_vs exists in every namespace once ip_vs is loaded.
    let has_ipvs = lab
        .exec_in(&host.netns, "test", ["-e", "/proc/net/ip_vs"])
        .is_ok();
    let validate = cplb(&lab, &host.netns, &["validate", &name]);
    if has_ipvs {
        assert!(validate.status.success(), "{validate:?}");
        let config = cplb(&lab, &host.netns, &["config", &name]);
        let text = String::from_utf8_lossy(&config.stdout);
        assert!(text.contains("IPVS mode (virtualServers)"), "{text}");
    } else {
        assert_eq!(validate.status.code(), Some(1), "{validate:?}");
        let said = problems(&validate, &name);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("keepalived.virtualServers: IPVS mode needs the kernel's IP Virtual Server on this host (modprobe ip_vs)"),
            "{said:?}"
        );
        let run = cplb(
            &lab,
            &host.netns,
            &["run", "--config", &name, "--lock-file", &lock],
        );
        assert_eq!(run.status.code(), Some(78), "{run:?}");
        assert_eq!(problems(&run, &name), said);
        // Refused before anything was made.
        let links = lab.ip(&host.netns, ["-o", "link", "show"]).unwrap();
        assert!(!links.contains("dummyvip0"), "{links}");
        assert!(
            lab.exec_in(&host.netns, "nft", ["list", "table", "arp", "cplb_ipvs"])
                .is_err()
        );
        assert!(
            !lab.has_address(&host.netns, "eth0", "192.0.2.100".parse().unwrap())
                .unwrap()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
