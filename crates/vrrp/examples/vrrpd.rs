//! `vrrpd`: floats virtual IPs with VRRP from a small YAML file, with no
//! Kubernetes and no keepalived anywhere. The standalone use of this crate:
//!
//! ```text
//! cargo run -p cplb-vrrp --example vrrpd -- vrrpd.yaml
//! ```
//!
//! ```yaml
//! instances:
//!   - interface: eth0
//!     vrid: 51
//!     priority: 200          # 1..=255; default 100
//!     version: 2             # 2 (default, IPv4) or 3 (IPv4 or IPv6)
//!     advertInterval: 1      # seconds; default 1 (v3: centisecond steps)
//!     authPass: secret       # VRRPv2 simple text, first 8 bytes
//!     vips: [192.0.2.100/24] # with the prefix to add them with
//!     unicastPeers: []       # empty: multicast
//!     primaryIp: 192.0.2.10  # default: the interface's primary address
//!                            # (IPv6: its link-local address)
//!     preempt: true
//!     lease: auto            # auto | off | seconds: the VIP's lifetime
//! ```
//!
//! SIGTERM or SIGINT: every Master sends a priority-0 advert and removes its
//! VIPs. Logs go to stderr (`RUST_LOG` sets the level).

use std::io::IsTerminal;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use cplb_vrrp::fsm::Config;
use cplb_vrrp::io::driver::{Driver, InstanceConfig, VipLease};
use cplb_vrrp::io::netlink::{Vip, VipManager};
use cplb_vrrp::wire::{Auth, Centis, Version};
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    instances: Vec<Instance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Instance {
    interface: String,
    vrid: u8,
    #[serde(default = "default_priority")]
    priority: u8,
    #[serde(default = "default_version")]
    version: u8,
    #[serde(default = "default_interval")]
    advert_interval: f64,
    #[serde(default)]
    auth_pass: Option<String>,
    vips: Vec<String>,
    #[serde(default)]
    unicast_peers: Vec<IpAddr>,
    #[serde(default)]
    primary_ip: Option<IpAddr>,
    #[serde(default = "default_preempt")]
    preempt: bool,
    #[serde(default)]
    lease: Option<String>,
}

fn default_priority() -> u8 {
    100
}
fn default_version() -> u8 {
    2
}
fn default_interval() -> f64 {
    1.0
}
fn default_preempt() -> bool {
    true
}

/// `192.0.2.100/24` or a bare address (a host prefix).
fn parse_vip(text: &str) -> Result<Vip, String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| format!("bad VIP {text:?}"))?;
    let prefix = match prefix {
        Some(p) => p.parse().map_err(|_| format!("bad prefix in {text:?}"))?,
        None if addr.is_ipv6() => 128,
        None => 32,
    };
    Vip::new(addr, prefix).map_err(|e| format!("{text}: {e}"))
}

async fn resolve(netlink: &VipManager, instance: Instance) -> Result<InstanceConfig, String> {
    let vips = instance
        .vips
        .iter()
        .map(|v| parse_vip(v))
        .collect::<Result<Vec<_>, _>>()?;
    let ipv6 = vips.first().is_some_and(|v| v.addr.is_ipv6());
    let addrs: Vec<IpAddr> = vips.iter().map(|v| v.addr).collect();
    let primary_ip = match instance.primary_ip {
        Some(ip) => ip,
        None => {
            let link = netlink
                .interface(&instance.interface)
                .await
                .map_err(|e| e.to_string())?;
            netlink
                .advert_source(link.index, ipv6, &addrs)
                .await
                .map_err(|e| format!("{}: {e}", instance.interface))?
        }
    };
    let version = Version::try_from(instance.version).map_err(|e| e.to_string())?;
    let mut router = Config::new(version, instance.vrid, primary_ip, addrs);
    router.priority = instance.priority;
    router.preempt = instance.preempt;
    router.advert_interval = Centis(
        (instance.advert_interval * 100.0)
            .round()
            .clamp(0.0, 65535.0) as u16,
    );
    if let Some(pass) = &instance.auth_pass {
        router.auth = Auth::pass(pass.as_bytes());
    }
    let mut config = InstanceConfig::new(router, instance.interface);
    config.vip_prefixes = vips;
    config.unicast_peers = instance.unicast_peers;
    config.lease = match instance.lease.as_deref() {
        None | Some("auto") => VipLease::Auto,
        Some("off") => VipLease::Off,
        Some(secs) => VipLease::Fixed(Duration::from_secs(
            secs.parse().map_err(|_| format!("lease {secs:?}"))?,
        )),
    };
    config
        .validate()
        .map_err(|e| format!("VRID {}: {e}", instance.vrid))?;
    Ok(config)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: vrrpd CONFIG.yaml");
        return ExitCode::from(2);
    };
    let file: File = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_saphyr::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(file) => file,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    let netlink = match VipManager::new() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("netlink: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut configs = Vec::new();
    for instance in file.instances {
        match resolve(&netlink, instance).await {
            Ok(config) => configs.push(config),
            Err(e) => {
                eprintln!("{path}: {e}");
                return ExitCode::from(2);
            }
        }
    }

    let cancel = CancellationToken::new();
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        on_signal.cancel();
    });
    match Driver::builder(configs).run(cancel).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vrrpd: {e}");
            ExitCode::FAILURE
        }
    }
}
