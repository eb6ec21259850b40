//! keepalived as a peer in the lab, configured exactly as k0s renders it
//! (`KeepalivedVRRPConfigTemplate`, see k0s-cplb-behaviour.md §2.2): no
//! `global_defs`, every node `state BACKUP` with priority 200, `advert_int`,
//! `auth_type PASS`, the VIPs with their prefix, and unicast peers when set.
//! Mixed-cluster tests run these beside cplb nodes, as a rolling upgrade
//! from k0s's keepalived would.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{ChildId, Lab, LabError, require_tool, wait_until};

/// One `vrrp_instance` as k0s renders it.
#[derive(Debug, Clone)]
pub struct K0sInstance {
    /// `interface`.
    pub interface: String,
    /// `virtual_router_id`.
    pub vrid: u8,
    /// `advert_int`, seconds.
    pub advert_int: u8,
    /// `auth_pass` (k0s always sets one; keepalived ignores it for IPv6).
    pub auth_pass: String,
    /// `virtual_ipaddress` entries, with prefix (`192.0.2.100/24`).
    pub vips: Vec<String>,
    /// `unicast_src_ip` and `unicast_peer`, when unicast.
    pub unicast: Option<(IpAddr, Vec<IpAddr>)>,
}

impl K0sInstance {
    /// k0s's defaults for one VIP: eth0, VRID 51, advert 1 s.
    pub fn new(vip: &str, auth_pass: &str) -> K0sInstance {
        K0sInstance {
            interface: crate::HOST_IFNAME.to_string(),
            vrid: 51,
            advert_int: 1,
            auth_pass: auth_pass.to_string(),
            vips: vec![vip.to_string()],
            unicast: None,
        }
    }
}

/// k0s's `keepalived.conf` for these instances. `vrrp_version` adds the one
/// `global_defs` line a VRRPv3 cluster needs (k0s renders none: keepalived's
/// default is v2 for IPv4 and v3 for IPv6).
pub fn render_k0s(instances: &[K0sInstance], vrrp_version: Option<u8>) -> String {
    let mut conf = String::new();
    if let Some(version) = vrrp_version {
        let _ = writeln!(conf, "global_defs {{\n    vrrp_version {version}\n}}\n");
    }
    for (i, instance) in instances.iter().enumerate() {
        let _ = writeln!(conf, "vrrp_instance k0s-vip-{i} {{");
        let _ = writeln!(conf, "    state BACKUP");
        let _ = writeln!(conf, "    interface {}", instance.interface);
        let _ = writeln!(conf, "    virtual_router_id {}", instance.vrid);
        let _ = writeln!(conf, "    priority 200");
        let _ = writeln!(conf, "    advert_int {}", instance.advert_int);
        let _ = writeln!(conf, "    authentication {{");
        let _ = writeln!(conf, "        auth_type PASS");
        let _ = writeln!(conf, "        auth_pass {}", instance.auth_pass);
        let _ = writeln!(conf, "    }}");
        let _ = writeln!(conf, "    virtual_ipaddress {{");
        for vip in &instance.vips {
            let _ = writeln!(conf, "        {vip}");
        }
        let _ = writeln!(conf, "    }}");
        if let Some((source, peers)) = &instance.unicast {
            let _ = writeln!(conf, "    unicast_src_ip {source}");
            let _ = writeln!(conf, "    unicast_peer {{");
            for peer in peers {
                let _ = writeln!(conf, "        {peer}");
            }
            let _ = writeln!(conf, "    }}");
        }
        let _ = writeln!(conf, "}}\n");
    }
    conf
}

/// A keepalived running in a lab host, with its own config, pid files and
/// log; the files are removed on drop (the lab kills the process).
#[derive(Debug)]
pub struct Keepalived {
    /// The lab's handle on the process.
    pub child: ChildId,
    dir: PathBuf,
}

impl Keepalived {
    /// Starts `keepalived` in `netns` with `conf`, VRRP only, in the
    /// foreground, logging to a file (see [`Keepalived::log`]).
    pub fn start(lab: &Lab, netns: &str, conf: &str) -> Result<Keepalived, LabError> {
        require_tool("keepalived", "keepalived")?;
        let dir = std::env::temp_dir().join(format!("{netns}-keepalived"));
        let io = |source| LabError::Spawn {
            command: format!("prepare {}", dir.display()),
            source,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        fs::write(dir.join("keepalived.conf"), conf).map_err(io)?;
        let log = File::create(dir.join("keepalived.log")).map_err(io)?;
        let log_err = log.try_clone().map_err(io)?;
        let mut cmd = lab.command_in(netns, "keepalived");
        cmd.args([
            "--dont-fork",
            "--vrrp",
            "--log-console",
            "--log-detail",
            "--no-syslog",
        ])
        .arg("--use-file")
        .arg(dir.join("keepalived.conf"))
        // Own pid files: several keepalived run on one machine.
        .arg("--pid")
        .arg(dir.join("keepalived.pid"))
        .arg("--vrrp_pid")
        .arg(dir.join("vrrp.pid"))
        .arg("--checkers_pid")
        .arg(dir.join("checkers.pid"))
        .stdout(log)
        .stderr(log_err);
        let child = lab.spawn(cmd)?;
        Ok(Keepalived { child, dir })
    }

    /// Everything keepalived logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("keepalived.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<(), LabError> {
        wait_until(&format!("keepalived to log {needle:?}"), timeout, || {
            self.log().contains(needle)
        })
    }

    /// The log lines in which keepalived complains about a peer's adverts:
    /// the ones a mixed cluster must never produce. Only what it logs once
    /// running counts: configuration warnings come before "Startup
    /// complete" (k0s renders `auth_pass` even for VRRPv3, which keepalived
    /// ignores with a warning).
    pub fn complaints(&self) -> Vec<String> {
        // keepalived 2.2's receive-check messages, e.g. "received an
        // invalid passwd!", "bogus VRRP packet received", "advertisement
        // interval mismatch", "invalid ttl"; matched case-insensitively.
        const COMPLAINTS: [&str; 7] = [
            "bogus",
            "mismatch",
            "invalid",
            "passwd",
            "authentication",
            "checksum",
            "ttl",
        ];
        let log = self.log();
        let running = log.rfind("Startup complete").map_or("", |at| &log[at..]);
        running
            .lines()
            .filter(|line| {
                let line = line.to_lowercase();
                COMPLAINTS.iter().any(|c| line.contains(c))
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
