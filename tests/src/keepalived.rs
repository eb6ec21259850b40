//! keepalived as a peer in the lab, configured exactly as k0s renders it
//! (`KeepalivedVRRPConfigTemplate`, see k0s-cplb-behaviour.md §2.2): no
//! `global_defs`, every node `state BACKUP` with priority 200, `advert_int`,
//! `auth_type PASS`, the VIPs with their prefix, and unicast peers when set.
//! Mixed-cluster tests run these beside cplb nodes, as a rolling upgrade
//! from k0s's keepalived would.
//!
//! Which keepalived: see [`binary`]. k0s embeds keepalived 2.4.3;
//! `scripts/setup` builds it into [`K0S_KEEPALIVED`] when the source is
//! there, and the tests run it in preference to the distribution's (2.2.7
//! on Debian 12). Every keepalived started here has its own configuration,
//! pid files and log in a directory of its own, so it runs beside a system
//! keepalived (whose default pid file is `/run/keepalived.pid`) without
//! either noticing the other.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::{ChildId, Lab, LabError, require_tool, wait_until};

/// Where `scripts/setup` installs keepalived 2.4.3, the version k0s embeds.
pub const K0S_KEEPALIVED: &str = "/opt/keepalived-2.4.3/sbin/keepalived";

/// The environment variable that forces a keepalived binary (a path, or a
/// name looked up on `PATH`: `CPLB_KEEPALIVED=keepalived` runs the
/// distribution's even where 2.4.3 is installed).
pub const KEEPALIVED_ENV: &str = "CPLB_KEEPALIVED";

/// The keepalived binary the tests run as a peer, and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepalivedBinary {
    /// The program to run.
    pub path: PathBuf,
    /// What `--version` reports, e.g. `Keepalived v2.4.3`.
    pub version: String,
    /// Why this one: `$CPLB_KEEPALIVED`, k0s's version, or the distribution's.
    pub chosen_by: &'static str,
}

impl KeepalivedBinary {
    /// `2.4.3` from `Keepalived v2.4.3 (...)`.
    pub fn version_number(&self) -> &str {
        self.version
            .split_whitespace()
            .find_map(|word| word.strip_prefix('v'))
            .unwrap_or(&self.version)
    }
}

/// The keepalived the tests run: `$CPLB_KEEPALIVED` if set; else
/// [`K0S_KEEPALIVED`] (2.4.3, k0s's) if it is installed; else `keepalived`
/// from `PATH` (Debian's 2.2.7). Chosen once per process and printed to
/// stderr, so every test's output says which keepalived ran.
pub fn binary() -> Result<&'static KeepalivedBinary, LabError> {
    static CHOSEN: OnceLock<Result<KeepalivedBinary, String>> = OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| {
        let picked = choose().map_err(|e| e.to_string());
        if let Ok(k) = &picked {
            eprintln!(
                "cplb-e2e: keepalived peer: {} ({}, {})",
                k.version,
                k.path.display(),
                k.chosen_by
            );
        }
        picked
    });
    // nextest runs each test in a process of its own: each test says it.
    chosen
        .as_ref()
        .map_err(|e| LabError::Unknown(format!("keepalived binary: {e}")))
}

fn choose() -> Result<KeepalivedBinary, LabError> {
    let (path, chosen_by) = if let Some(forced) = std::env::var_os(KEEPALIVED_ENV) {
        (PathBuf::from(forced), "forced by $CPLB_KEEPALIVED")
    } else if is_executable(Path::new(K0S_KEEPALIVED)) {
        (
            PathBuf::from(K0S_KEEPALIVED),
            "k0s's version, built by scripts/setup",
        )
    } else {
        require_tool("keepalived", "keepalived")?;
        (
            PathBuf::from("keepalived"),
            "the distribution's: keepalived 2.4.3 is not installed (scripts/setup builds it from ../shared/peers)",
        )
    };
    let out = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: format!("{} --version", path.display()),
            source,
        })?;
    // keepalived prints its version to stderr.
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find(|l| l.starts_with("Keepalived v"))
        .map(|l| l.split(" (").next().unwrap_or(l).trim().to_owned())
        .ok_or_else(|| {
            LabError::Unknown(format!(
                "{} --version printed no version: {text:?}",
                path.display()
            ))
        })?;
    Ok(KeepalivedBinary {
        path,
        version,
        chosen_by,
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// One `vrrp_instance` as k0s renders it.
#[derive(Debug, Clone)]
pub struct K0sInstance {
    /// `interface`.
    pub interface: String,
    /// `virtual_router_id`.
    pub vrid: u8,
    /// `advert_int`, seconds (keepalived takes fractions: `0.1`).
    pub advert_int: f64,
    /// `auth_pass` (k0s always sets one; keepalived ignores it for IPv6).
    pub auth_pass: String,
    /// `virtual_ipaddress` entries, with prefix (`192.0.2.100/24`).
    pub vips: Vec<String>,
    /// `unicast_src_ip` and `unicast_peer`, when unicast.
    pub unicast: Option<(IpAddr, Vec<IpAddr>)>,
    /// `notify_master` and `notify_backup` (k0s renders them in IPVS mode
    /// with one instance: its `keepalived-setstate`).
    pub notify: Option<(String, String)>,
}

impl K0sInstance {
    /// k0s's defaults for one VIP: eth0, VRID 51, advert 1 s.
    pub fn new(vip: &str, auth_pass: &str) -> K0sInstance {
        K0sInstance {
            interface: crate::HOST_IFNAME.to_string(),
            vrid: 51,
            advert_int: 1.0,
            auth_pass: auth_pass.to_string(),
            vips: vec![vip.to_string()],
            unicast: None,
            notify: None,
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
        if let Some((master, backup)) = &instance.notify {
            let _ = writeln!(conf, "    notify_master {master:?}");
            let _ = writeln!(conf, "    notify_backup {backup:?}");
        }
        let _ = writeln!(conf, "}}\n");
    }
    conf
}

/// k0s's IPVS file names in its run directory (k0s-cplb-behaviour.md §2.1):
/// the virtual servers as rendered, and the symlink keepalived includes (to
/// the rendered file on MASTER, to `/dev/null` on BACKUP).
pub const K0S_VS_GENERATED: &str = "keepalived-virtualservers-generated.conf";
/// See [`K0S_VS_GENERATED`].
pub const K0S_VS_CONSUMED: &str = "keepalived-virtualservers-consumed.conf";

/// One `virtualServers[]` entry as k0s renders it
/// (`KeepalivedVirtualServersConfigTemplate`, §2.3), with k0s's defaults
/// from [`K0sVirtualServer::new`]: `rr`, `DR`, persistence 360 s.
#[derive(Debug, Clone)]
pub struct K0sVirtualServer {
    /// `ipAddress`.
    pub ip: IpAddr,
    /// `delay_loop`, seconds as k0s prints them (`60`, `1.5`).
    pub delay_loop: String,
    /// `lb_algo`.
    pub lb_algo: String,
    /// `lb_kind`.
    pub lb_kind: String,
    /// `persistence_timeout`.
    pub persistence_timeout: u32,
}

impl K0sVirtualServer {
    /// k0s's defaults for `ip` with this `delay_loop` (k0s's default is `60`).
    pub fn new(ip: IpAddr, delay_loop: &str) -> K0sVirtualServer {
        K0sVirtualServer {
            ip,
            delay_loop: delay_loop.to_string(),
            lb_algo: "rr".to_string(),
            lb_kind: "DR".to_string(),
            persistence_timeout: 360,
        }
    }
}

/// k0s's `keepalived-virtualservers-generated.conf`: nothing without real
/// servers; else one `virtual_server` per entry on `port` with every real
/// server at weight 1 and k0s's `TCP_CHECK`.
pub fn render_k0s_virtual_servers(
    servers: &[K0sVirtualServer],
    port: u16,
    real_servers: &[IpAddr],
) -> String {
    let mut conf = String::new();
    if real_servers.is_empty() {
        return conf;
    }
    for vs in servers {
        let _ = writeln!(conf, "virtual_server {} {port} {{", vs.ip);
        let _ = writeln!(conf, "    delay_loop {}", vs.delay_loop);
        let _ = writeln!(conf, "    lb_algo {}", vs.lb_algo);
        let _ = writeln!(conf, "    lb_kind {}", vs.lb_kind);
        let _ = writeln!(conf, "    persistence_timeout {}", vs.persistence_timeout);
        let _ = writeln!(conf, "    protocol TCP\n");
        for rs in real_servers {
            let _ = writeln!(conf, "    real_server {rs} {port} {{");
            let _ = writeln!(conf, "        weight 1");
            let _ = writeln!(conf, "        TCP_CHECK {{");
            let _ = writeln!(conf, "            warmup 0");
            let _ = writeln!(conf, "            retry 1");
            let _ = writeln!(conf, "            connect_timeout 3");
            let _ = writeln!(conf, "            connect_port {port}");
            let _ = writeln!(conf, "        }}");
            let _ = writeln!(conf, "    }}");
        }
        let _ = writeln!(conf, "}}\n");
    }
    conf
}

/// k0s's `keepalived-setstate` as a shell script (§2.4): points the
/// consumed symlink at the rendered virtual servers (MASTER) or `/dev/null`
/// (BACKUP), then SIGHUPs keepalived (its pid file in the run directory).
pub const K0S_SETSTATE_SCRIPT: &str = r#"#!/bin/sh
# k0s keepalived-setstate -r <run-dir> -s MASTER|BACKUP, as a script
[ "$1" = keepalived-setstate ] && shift
while getopts r:s: opt; do
  case $opt in r) dir=$OPTARG ;; s) state=$OPTARG ;; *) exit 2 ;; esac
done
[ -d "$dir" ] || { echo "run-dir $dir is invalid" >&2; exit 1; }
case $state in
  MASTER) target="$dir/keepalived-virtualservers-generated.conf" ;;
  BACKUP) target=/dev/null ;;
  *) echo "invalid state $state, expected MASTER or BACKUP" >&2; exit 1 ;;
esac
rm -f "$dir/keepalived-virtualservers-consumed.conf"
ln -s "$target" "$dir/keepalived-virtualservers-consumed.conf"
kill -HUP "$(cat "$dir/keepalived.pid")"
"#;

/// A keepalived running in a lab host, with its own config, pid files and
/// log; the files are removed on drop (the lab kills the process).
#[derive(Debug)]
pub struct Keepalived {
    /// The lab's handle on the process.
    pub child: ChildId,
    /// Which keepalived it is.
    pub binary: KeepalivedBinary,
    dir: PathBuf,
}

impl Keepalived {
    /// Starts keepalived (the one [`binary`] picks) in `netns` with
    /// `conf`, VRRP only, in the foreground, logging to a file (see
    /// [`Keepalived::log`]).
    pub fn start(lab: &Lab, netns: &str, conf: &str) -> Result<Keepalived, LabError> {
        Keepalived::start_in(lab, netns, |_| Ok(conf.to_owned()), true)
    }

    /// Starts keepalived as k0s runs it in IPVS mode (VRRP and the
    /// checkers, no `--vrrp`) with one VRRP instance: `instance` gets k0s's
    /// `notify_master`/`notify_backup` (`keepalived-setstate`, here
    /// [`K0S_SETSTATE_SCRIPT`]) and the configuration includes the consumed
    /// symlink, which starts at `/dev/null` (keepalived starts as BACKUP);
    /// `virtual_servers` is the rendered file
    /// ([`render_k0s_virtual_servers`]).
    pub fn start_k0s_ipvs(
        lab: &Lab,
        netns: &str,
        instance: &K0sInstance,
        virtual_servers: &str,
    ) -> Result<Keepalived, LabError> {
        Keepalived::start_in(
            lab,
            netns,
            |dir| {
                let setstate = dir.join("keepalived-setstate");
                fs::write(&setstate, K0S_SETSTATE_SCRIPT)?;
                use std::os::unix::fs::PermissionsExt as _;
                fs::set_permissions(&setstate, fs::Permissions::from_mode(0o755))?;
                fs::write(dir.join(K0S_VS_GENERATED), virtual_servers)?;
                let consumed = dir.join(K0S_VS_CONSUMED);
                let _ = fs::remove_file(&consumed);
                std::os::unix::fs::symlink("/dev/null", &consumed)?;
                let notify = |state: &str| {
                    format!(
                        "'{}' keepalived-setstate -r '{}' -s {state}",
                        setstate.display(),
                        dir.display()
                    )
                };
                let mut instance = instance.clone();
                instance.notify = Some((notify("MASTER"), notify("BACKUP")));
                Ok(format!(
                    "{}include {K0S_VS_CONSUMED}\n",
                    render_k0s(&[instance], None)
                ))
            },
            false,
        )
    }

    /// Prepares the directory (`prepare` writes what it needs and returns
    /// the configuration) and starts keepalived, VRRP only or not.
    fn start_in(
        lab: &Lab,
        netns: &str,
        prepare: impl FnOnce(&Path) -> std::io::Result<String>,
        vrrp_only: bool,
    ) -> Result<Keepalived, LabError> {
        let binary = binary()?.clone();
        let dir = std::env::temp_dir().join(format!("{netns}-keepalived"));
        let io = |source| LabError::Spawn {
            command: format!("prepare {}", dir.display()),
            source,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        let conf = prepare(&dir).map_err(io)?;
        fs::write(dir.join("keepalived.conf"), conf).map_err(io)?;
        let log = File::create(dir.join("keepalived.log")).map_err(io)?;
        let log_err = log.try_clone().map_err(io)?;
        let mut cmd = lab.command_in(netns, &binary.path);
        cmd.args(["--dont-fork"]);
        if vrrp_only {
            cmd.arg("--vrrp");
        }
        cmd.args(["--log-console", "--log-detail", "--no-syslog"])
            .arg("--use-file")
            .arg(dir.join("keepalived.conf"))
            // Own pid files: several keepalived run on one machine, and a
            // system one (pid file /run/keepalived.pid) may run beside them.
            .arg("--pid")
            .arg(dir.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(dir.join("vrrp.pid"))
            .arg("--checkers_pid")
            .arg(dir.join("checkers.pid"))
            .stdout(log)
            .stderr(log_err);
        let child = lab.spawn(cmd)?;
        Ok(Keepalived { child, binary, dir })
    }

    /// Its directory: configuration, pid files, log.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        // keepalived's receive-check messages (vrrp_check_packet), e.g.
        // 2.2's "received an invalid passwd!", "bogus VRRP packet
        // received", "advertisement interval mismatch", "invalid ttl", and
        // 2.4's "vrrp packet from X too long", "wrong VRRP version",
        // "expected 1 VIPs but received 2", "ip address associated with
        // VRID 51 not present in advert", "TTL/HL 64 from X not in range",
        // "Expected unicast packet but received multicast packet",
        // "unicast source address X not a unicast peer", "missing
        // authentication trailer"; matched case-insensitively.
        const COMPLAINTS: [&str; 15] = [
            "bogus",
            "mismatch",
            "invalid",
            "passwd",
            "authentication",
            "checksum",
            "ttl",
            "too long",
            "too short",
            "wrong",
            "expected",
            "not present",
            "not in range",
            "not a unicast peer",
            "trailer",
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
