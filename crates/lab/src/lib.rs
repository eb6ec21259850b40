//! The three-controller lab: cplb as a k0s operator would run it.
//!
//! [`ControlPlane`] builds, in network namespaces it owns (on the harness of
//! the `cplb-e2e` package), three controller hosts and a client on one LAN.
//! Each controller runs a test kube-apiserver on :6443 with its own
//! certificate (the three share one store whose `kubernetes` Endpoints and
//! EndpointSlice list the controllers, as a real apiserver's do) and the real
//! `cplb` binary. It hands out kubeconfigs, reads from the kernel who holds
//! the VIP and which NAT rules exist, probes the API through the VIP from the
//! client, and tears everything down on drop. The demo (`cplb-lab demo`),
//! the end-to-end tests in `tests/`, the benchmarks and the soak use it.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use cplb_e2e::keepalived::{
    K0sInstance, K0sVirtualServer, Keepalived, render_k0s, render_k0s_virtual_servers,
};
use cplb_e2e::{ChildId, Lab, LabError, list_netns, wait_for};
use cplb_testapi::{ApiServer, Cluster, ServerOptions};
use nix::sys::signal::Signal;

pub mod bench;
pub mod clean;
pub mod demo;
pub mod footprint;
pub mod probe;
pub mod soak;

pub use probe::{Answer, ProbeError, Prober};

/// The API port (k0s's `spec.api.port`).
pub const API_PORT: u16 = 6443;
/// The proxy port (k0s's `userSpaceProxyBindPort`).
pub const PROXY_PORT: u16 = 6444;
/// Each agent's admin address, inside its controller's namespace.
pub const ADMIN_ADDRESS: &str = "127.0.0.1:9440";
/// The namespace prefix of the demo lab (tests use unique ones).
pub const DEMO_PREFIX: &str = "cplb-demo-";
/// k0s's dummy link holding the VIPs in IPVS mode.
pub const DUMMY_VIP_LINK: &str = "dummyvip0";
/// k0s's keepalived `auth_pass` in this lab.
pub const AUTH_PASS: &str = "lab";

/// Why the lab failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace harness failed.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// The test apiserver could not start.
    #[error("test apiserver: {0}")]
    Api(#[from] cplb_testapi::Error),
    /// A probe could not even be set up.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// A file of the lab could not be written or read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The demo prefix is taken by a lab that is still there.
    #[error(
        "network namespaces of an earlier lab still exist ({0}); remove them with `cplb-lab clean`"
    )]
    AlreadyRunning(String),
    /// The `cplb` binary could not be found or built.
    #[error("cannot find or build the cplb binary: {0}")]
    Binary(String),
    /// Something the caller asked for does not exist.
    #[error("{0}")]
    Invalid(String),
}

/// The lab's address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// 192.0.2.0/24, VRRPv2 (k0s's default).
    V4,
    /// 2001:db8::/64, VRRPv3.
    V6,
}

impl Family {
    fn controller_cidr(self, i: usize) -> String {
        match self {
            Family::V4 => format!("192.0.2.{}/24", 11 + i),
            Family::V6 => format!("2001:db8::{}/64", 11 + i),
        }
    }
    /// The client host's address with its prefix.
    pub fn client_cidr(self) -> &'static str {
        match self {
            Family::V4 => "192.0.2.50/24",
            Family::V6 => "2001:db8::50/64",
        }
    }
    /// The VIP with its prefix, as k0s's `virtualIPs` holds it.
    pub fn vip_cidr(self) -> &'static str {
        match self {
            Family::V4 => "192.0.2.100/24",
            Family::V6 => "2001:db8::100/64",
        }
    }
    /// `iptables-save` or `ip6tables-save`.
    pub fn iptables_save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// How to build the lab.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace prefix; `None` picks a unique one (tests). A fixed prefix
    /// (the demo's) must not be in use.
    pub prefix: Option<String>,
    /// Address family.
    pub family: Family,
    /// Start `cplb` on every controller (else start them one by one, or run
    /// keepalived controllers first for an upgrade).
    pub start_agents: bool,
    /// The agents' `--log-level`.
    pub log_level: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: None,
            family: Family::V4,
            start_agents: true,
            log_level: Some("info,cplb=debug,cplb_vrrp=debug,cplb_reconciler=debug".to_owned()),
        }
    }
}

/// One controller host.
#[derive(Debug, Clone)]
pub struct Controller {
    /// `ctl1` …
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its LAN address.
    pub ip: IpAddr,
    /// Its `cplb` configuration.
    pub config: PathBuf,
    /// The kubeconfig of its own apiserver (the agent's).
    pub kubeconfig: PathBuf,
    /// Where its agent's output goes.
    pub log: PathBuf,
}

/// The health checks of the legacy stack's HAProxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyChecks {
    /// TCP connect checks (`check inter 1s fall 1 rise 2`).
    Tcp,
    /// What cplb's reconciler does: HTTPS `GET /readyz` with the client
    /// certificate (`option httpchk`, `check-ssl verify none crt …`), 800 ms
    /// timeout, same interval and thresholds.
    Https,
}

/// A controller running k0s's keepalived plus REDIRECT rule and a proxy
/// (haproxy standing in for k0s's), as before an upgrade to cplb.
#[derive(Debug)]
struct LegacyController {
    keepalived: Keepalived,
    /// `None` in IPVS mode (no proxy, no REDIRECT rule; `dummyvip0`).
    haproxy: Option<ChildId>,
}

/// Three controllers and a client; everything goes on drop.
pub struct ControlPlane {
    // Fields drop in order: processes and apiservers before the namespaces.
    legacy: Vec<Option<LegacyController>>,
    agents: Vec<Option<ChildId>>,
    apiservers: Vec<Option<ApiServer>>,
    lab: Lab,
    runtime: tokio::runtime::Runtime,
    cluster: Cluster,
    family: Family,
    controllers: Vec<Controller>,
    client_netns: String,
    vip: IpAddr,
    dir: PathBuf,
    cplb: PathBuf,
    log_level: Option<String>,
    client_kubeconfig: PathBuf,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("prefix", &self.lab.prefix())
            .field("controllers", &self.controllers)
            .field("vip", &self.vip)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Builds the lab and, with `options.start_agents`, starts `cplb` on
    /// every controller (it does not wait for a VIP holder).
    pub fn start(options: Options) -> Result<ControlPlane, Error> {
        let cplb = locate_cplb()?;
        cplb_e2e::require_tool(options.family.iptables(), "iptables")?;
        let lab = match &options.prefix {
            Some(prefix) => {
                let existing = list_netns(prefix)?;
                if !existing.is_empty() {
                    return Err(Error::AlreadyRunning(existing.join(", ")));
                }
                Lab::with_prefix(prefix)?
            }
            None => Lab::new()?,
        };
        let dir = std::env::temp_dir().join(lab.prefix().trim_end_matches('-'));
        // A directory left by a killed lab of the same name is stale.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|source| Error::File {
            path: dir.clone(),
            source,
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|source| Error::File {
                path: dir.clone(),
                source,
            })?;
        let family = options.family;
        let vip = cidr_ip(family.vip_cidr())?;
        let mut plane = ControlPlane {
            legacy: Vec::new(),
            agents: Vec::new(),
            apiservers: Vec::new(),
            lab,
            runtime,
            cluster: Cluster::new()?,
            family,
            controllers: Vec::new(),
            client_netns: String::new(),
            vip,
            client_kubeconfig: dir.join("client.kubeconfig"),
            dir,
            cplb,
            log_level: options.log_level.clone(),
        };
        for i in 0..3 {
            let name = format!("ctl{}", i + 1);
            let cidr = family.controller_cidr(i);
            let host = match family {
                Family::V4 => plane.lab.add_host(&name, Some(&cidr), None)?,
                Family::V6 => plane.lab.add_host(&name, None, Some(&cidr))?,
            };
            let ip = cidr_ip(&cidr)?;
            let controller = Controller {
                config: plane.dir.join(format!("{name}.yaml")),
                kubeconfig: plane.dir.join(format!("{name}.kubeconfig")),
                log: plane.dir.join(format!("{name}.log")),
                name,
                netns: host.netns,
                ip,
            };
            plane
                .cluster
                .write_kubeconfig(&controller.kubeconfig, SocketAddr::new(ip, API_PORT))?;
            write(&controller.config, &agent_config(&controller, family))?;
            plane.controllers.push(controller);
            plane.agents.push(None);
            plane.legacy.push(None);
            plane.apiservers.push(None);
        }
        let client = match family {
            Family::V4 => plane
                .lab
                .add_host("client", Some(family.client_cidr()), None)?,
            Family::V6 => plane
                .lab
                .add_host("client", None, Some(family.client_cidr()))?,
        };
        plane.client_netns = client.netns;
        plane.cluster.write_kubeconfig(
            &plane.client_kubeconfig,
            SocketAddr::new(plane.vip, API_PORT),
        )?;
        // The store holds the controllers as the `kubernetes` service's
        // endpoints, as the apiservers' own endpoint reconciler writes them.
        let ips: Vec<IpAddr> = plane.controllers.iter().map(|c| c.ip).collect();
        let store = plane.cluster.store();
        store.set_kubernetes_slice("kubernetes", &ips, API_PORT);
        store.set_kubernetes_endpoints(&ips, API_PORT);
        for i in 0..3 {
            plane.start_apiserver(i)?;
        }
        if options.start_agents {
            for i in 0..3 {
                plane.start_agent(i)?;
            }
        }
        Ok(plane)
    }

    /// The harness underneath (hosts, links, partitions).
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The controllers, `ctl1`..`ctl3`.
    pub fn controllers(&self) -> &[Controller] {
        &self.controllers
    }

    /// One controller by index (0..3).
    pub fn controller(&self, i: usize) -> Result<&Controller, Error> {
        self.controllers
            .get(i)
            .ok_or_else(|| Error::Invalid(format!("no controller {i}")))
    }

    /// The client host's namespace.
    pub fn client_netns(&self) -> &str {
        &self.client_netns
    }

    /// The VIP.
    pub fn vip(&self) -> IpAddr {
        self.vip
    }

    /// `VIP:6443`.
    pub fn vip_api(&self) -> SocketAddr {
        SocketAddr::new(self.vip, API_PORT)
    }

    /// The address family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The lab's files: configs, kubeconfigs, logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `cplb` binary the agents run.
    pub fn cplb_binary(&self) -> &Path {
        &self.cplb
    }

    /// Runs agents started from now on from `path` instead (an older build,
    /// for a before/after comparison in one run).
    pub fn set_cplb_binary(&mut self, path: PathBuf) {
        self.cplb = path;
    }

    /// The kubeconfig whose server is `https://VIP:6443`.
    pub fn client_kubeconfig(&self) -> &Path {
        &self.client_kubeconfig
    }

    /// The shared apiserver cluster (store, PKI).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Starts controller `i`'s apiserver on `[::]:6443`/`0.0.0.0:6443` in its
    /// namespace, with a new certificate of its own (its IP, the VIP and
    /// loopback as SANs, as k0s issues it).
    pub fn start_apiserver(&mut self, i: usize) -> Result<(), Error> {
        let c = self.controller(i)?.clone();
        let any: IpAddr = match self.family {
            Family::V4 => IpAddr::from([0, 0, 0, 0]),
            Family::V6 => IpAddr::from([0u16; 8]),
        };
        let options = ServerOptions {
            extra_sans: vec![
                c.ip,
                self.vip,
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
            ],
            ..ServerOptions::default()
        };
        let path = PathBuf::from(format!("/run/netns/{}", c.netns));
        let _enter = self.runtime.enter();
        let server = self
            .cluster
            .start_in_netns(&path, SocketAddr::new(any, API_PORT), options)?;
        self.apiservers[i] = Some(server);
        Ok(())
    }

    /// Stops controller `i`'s apiserver: it stops listening and closes its
    /// connections, as a crashed kube-apiserver.
    pub fn stop_apiserver(&mut self, i: usize) -> Result<(), Error> {
        let server = self
            .apiservers
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| Error::Invalid(format!("apiserver {i} is not running")))?;
        self.runtime.block_on(server.stop());
        Ok(())
    }

    /// Starts `cplb run` on controller `i`, logging (appending) to its log.
    pub fn start_agent(&mut self, i: usize) -> Result<(), Error> {
        self.start_agent_with(i, &[])
    }

    /// Starts `cplb run <extra args>` on controller `i` (`--supervise` …).
    pub fn start_agent_with(&mut self, i: usize, extra: &[&str]) -> Result<(), Error> {
        let c = self.controller(i)?.clone();
        if self.agents[i].is_some() {
            return Err(Error::Invalid(format!(
                "the agent on {} is running",
                c.name
            )));
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&c.log)
            .map_err(|source| Error::File {
                path: c.log.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| Error::File {
            path: c.log.clone(),
            source,
        })?;
        let mut cmd = self.lab.command_in(&c.netns, &self.cplb);
        cmd.arg("run").arg("--config").arg(&c.config);
        if let Some(level) = &self.log_level {
            cmd.args(["--log-level", level]);
        }
        cmd.args(extra)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        self.agents[i] = Some(self.lab.spawn(cmd)?);
        Ok(())
    }

    /// Whether controller `i`'s agent was started and not stopped by us.
    pub fn agent_running(&self, i: usize) -> bool {
        self.agents.get(i).is_some_and(Option::is_some)
    }

    /// Sends `signal` to controller `i`'s agent.
    pub fn signal_agent(&self, i: usize, signal: Signal) -> Result<(), Error> {
        let id = self.agent(i)?;
        Ok(self.lab.signal(id, signal)?)
    }

    /// SIGKILLs controller `i`'s agent and reaps it: a crash. Its VIP, rules
    /// and sockets stay behind, as after a real crash.
    pub fn kill_agent(&mut self, i: usize) -> Result<(), Error> {
        let id = self.agent(i)?;
        self.agents[i] = None;
        self.lab.kill(id)?;
        Ok(())
    }

    /// SIGTERMs controller `i`'s agent and waits (bounded) for it to exit;
    /// returns its exit status.
    pub fn stop_agent(&mut self, i: usize, timeout: Duration) -> Result<ExitStatus, Error> {
        self.signal_agent(i, Signal::SIGTERM)?;
        self.wait_agent(i, timeout)
    }

    /// Waits (bounded) for controller `i`'s agent to exit by itself (after
    /// a signal) and returns its exit status.
    pub fn wait_agent(&mut self, i: usize, timeout: Duration) -> Result<ExitStatus, Error> {
        let id = self.agent(i)?;
        let out = self.lab.wait_child(id, timeout)?;
        self.agents[i] = None;
        Ok(out.status)
    }

    /// The pid of the agent process started on controller `i` (with
    /// `--supervise`, the supervisor's).
    pub fn agent_pid(&self, i: usize) -> Result<u32, Error> {
        Ok(self.lab.child_pid(self.agent(i)?)?)
    }

    /// The children of controller `i`'s agent process: with `--supervise`,
    /// the worker (read from `/proc/<pid>/task/*/children`).
    pub fn agent_children(&self, i: usize) -> Result<Vec<u32>, Error> {
        children(self.agent_pid(i)?)
    }

    /// The pids of controller `i`'s keepalived (the parent; its VRRP child
    /// is among [`children`]) and haproxy.
    pub fn legacy_pids(&self, i: usize) -> Result<(u32, u32), Error> {
        let legacy = self
            .legacy
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::Invalid(format!("controller {i} runs no keepalived")))?;
        let haproxy = legacy.haproxy.ok_or_else(|| {
            Error::Invalid(format!(
                "controller {i} runs keepalived in IPVS mode, no haproxy"
            ))
        })?;
        Ok((
            self.lab.child_pid(legacy.keepalived.child)?,
            self.lab.child_pid(haproxy)?,
        ))
    }

    /// What controller `i`'s keepalived complained about in its peers'
    /// adverts since it started (see [`Keepalived::complaints`]).
    pub fn legacy_complaints(&self, i: usize) -> Vec<String> {
        self.legacy
            .get(i)
            .and_then(Option::as_ref)
            .map(|l| l.keepalived.complaints())
            .unwrap_or_default()
    }

    fn agent(&self, i: usize) -> Result<ChildId, Error> {
        self.agents
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| Error::Invalid(format!("no agent running on controller {i}")))
    }

    /// Runs `cplb <args>` inside controller `i` to completion.
    pub fn cplb(&self, i: usize, args: &[&str]) -> Result<std::process::Output, Error> {
        let c = self.controller(i)?;
        let mut cmd = self.lab.command_in(&c.netns, &self.cplb);
        cmd.args(args).stdin(Stdio::null());
        cmd.output().map_err(|source| Error::File {
            path: self.cplb.clone(),
            source,
        })
    }

    /// Controller `i`'s agent's `/status` document (`cplb status --json`
    /// in its namespace).
    pub fn status(&self, i: usize) -> Result<serde_json::Value, Error> {
        let out = self.cplb(i, &["status", "--json", "--address", ADMIN_ADDRESS])?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "cplb status on controller {i}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| Error::Invalid(format!("cplb status on controller {i}: {e}")))
    }

    /// Whether controller `i`'s agent reports itself healthy and running at
    /// its base priority (after start-up it runs degraded for a while).
    pub fn agent_at_base_priority(&self, i: usize) -> bool {
        self.status(i).is_ok_and(|s| {
            let base = &s["health"]["basePriority"];
            s["health"]["state"] == "healthy"
                && s["instances"].as_array().is_some_and(|all| {
                    !all.is_empty() && all.iter().all(|v| &v["priority"] == base)
                })
        })
    }

    /// What controller `i`'s agent logged so far.
    pub fn agent_log(&self, i: usize) -> String {
        self.controllers
            .get(i)
            .and_then(|c| fs::read_to_string(&c.log).ok())
            .unwrap_or_default()
    }

    /// The indices of the controllers whose LAN interface holds the VIP,
    /// read from the kernel (`ip -j addr`). A host whose interface is gone
    /// or down still counts if the address is on it.
    pub fn holders(&self) -> Result<Vec<usize>, Error> {
        let mut holders = Vec::new();
        for (i, c) in self.controllers.iter().enumerate() {
            if self
                .lab
                .has_address(&c.netns, cplb_e2e::HOST_IFNAME, self.vip)?
            {
                holders.push(i);
            }
        }
        Ok(holders)
    }

    /// Waits until exactly one controller, accepted by `pick`, holds the VIP.
    pub fn wait_for_holder(
        &self,
        timeout: Duration,
        pick: impl Fn(usize) -> bool,
    ) -> Result<usize, Error> {
        Ok(wait_for(
            "exactly one VIP holder",
            timeout,
            || match self.holders().ok()?.as_slice() {
                [one] if pick(*one) => Some(*one),
                _ => None,
            },
        )?)
    }

    /// Controller `i`'s NAT rules that redirect the VIP (`iptables-save -t
    /// nat` in its namespace), one line each.
    pub fn redirect_rules(&self, i: usize) -> Result<Vec<String>, Error> {
        let c = self.controller(i)?;
        let out = self
            .lab
            .exec_in(&c.netns, self.family.iptables_save(), ["-t", "nat"])?;
        let vip = self.vip.to_string();
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("REDIRECT") && l.contains(&vip))
            .map(str::to_owned)
            .collect())
    }

    /// The names of controller `i`'s network interfaces.
    pub fn links(&self, i: usize) -> Result<Vec<String>, Error> {
        let c = self.controller(i)?;
        let out = self.lab.ip(&c.netns, ["-o", "link", "show"])?;
        // `2: eth0@if5: <...` → `eth0`.
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .collect())
    }

    /// A prober on the client host with the admin identity.
    pub fn client_prober(&self, timeout: Duration) -> Result<Prober, Error> {
        self.prober(&self.client_netns.clone(), timeout)
    }

    /// A prober on any lab host.
    pub fn prober(&self, netns: &str, timeout: Duration) -> Result<Prober, Error> {
        let pki = self.cluster.pki();
        Ok(Prober::new(
            netns,
            &pki.ca_pem(),
            pki.client_cert_pem(),
            pki.client_key_pem(),
            timeout,
        )?)
    }

    /// The certificate fingerprint of each controller's apiserver, asked
    /// directly (not through the VIP), from the client; `None` where it
    /// does not answer.
    pub fn fingerprints(&self) -> Result<Vec<Option<String>>, Error> {
        let prober = self.client_prober(Duration::from_secs(2))?;
        Ok(self
            .controllers
            .iter()
            .map(|c| {
                prober
                    .get(SocketAddr::new(c.ip, API_PORT), "/version")
                    .ok()
                    .map(|a| a.fingerprint)
            })
            .collect())
    }

    /// Runs `kubectl --kubeconfig <VIP kubeconfig> <args>` on the client.
    pub fn kubectl(&self, args: &[&str]) -> Result<std::process::Output, Error> {
        cplb_e2e::require_tool("kubectl", "kubernetes-client")?;
        let mut cmd = self.lab.command_in(&self.client_netns, "kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.client_kubeconfig)
            .args(["--request-timeout", "5s"])
            .args(args)
            .stdin(Stdio::null());
        cmd.output().map_err(|source| Error::File {
            path: PathBuf::from("kubectl"),
            source,
        })
    }

    /// Turns controller `i` into a k0s controller of before the upgrade:
    /// keepalived configured as k0s renders it, k0s's REDIRECT rule, and
    /// haproxy on :6444 standing in for k0s's userspace proxy.
    pub fn start_legacy(&mut self, i: usize) -> Result<(), Error> {
        self.start_legacy_with(i, LegacyChecks::Tcp)
    }

    /// [`ControlPlane::start_legacy`] with HAProxy's health checks chosen.
    pub fn start_legacy_with(&mut self, i: usize, checks: LegacyChecks) -> Result<(), Error> {
        cplb_e2e::require_tool("haproxy", "haproxy")?;
        let c = self.controller(i)?.clone();
        self.k0s_redirect(&c.netns, "-A")?;
        let (check, httpchk) = match checks {
            LegacyChecks::Tcp => (String::new(), ""),
            LegacyChecks::Https => {
                // HAProxy's client identity: certificate and key in one file.
                let pem = self.dir.join("haproxy-client.pem");
                let pki = self.cluster.pki();
                write(
                    &pem,
                    &format!("{}{}", pki.client_cert_pem(), pki.client_key_pem()),
                )?;
                (
                    format!(" check-ssl verify none crt {}", pem.display()),
                    "    option httpchk GET /readyz\n    timeout check 800ms\n",
                )
            }
        };
        let mut servers = String::new();
        for other in &self.controllers {
            servers.push_str(&format!(
                "    server {} {}:{API_PORT} check{check} inter 1s fall 1 rise 2\n",
                other.name,
                bracket(other.ip)
            ));
        }
        let haproxy_cfg = self.dir.join(format!("{}-haproxy.cfg", c.name));
        write(
            &haproxy_cfg,
            &format!(
                "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 60s\n    timeout server 60s\n    retries 2\n    option redispatch\n\nfrontend apiserver\n    bind :::{PROXY_PORT} v4v6\n    default_backend apiservers\n\nbackend apiservers\n    balance roundrobin\n{httpchk}{servers}"
            ),
        )?;
        let log = self.dir.join(format!("{}-haproxy.log", c.name));
        let log = fs::File::create(&log).map_err(|source| Error::File { path: log, source })?;
        let mut cmd = self.lab.command_in(&c.netns, "haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(&haproxy_cfg)
            .stdout(Stdio::null())
            .stderr(log);
        let haproxy = self.lab.spawn(cmd)?;
        let conf = render_k0s(&[K0sInstance::new(self.family.vip_cidr(), AUTH_PASS)], None);
        let keepalived = Keepalived::start(&self.lab, &c.netns, &conf)?;
        self.legacy[i] = Some(LegacyController {
            keepalived,
            haproxy: Some(haproxy),
        });
        Ok(())
    }

    /// Turns controller `i` into a k0s controller in IPVS mode
    /// (`virtualServers: [{ipAddress: VIP, delayLoop}]`, unicast VRRP to
    /// the other controllers, as [`ipvs_agent_config`]): `dummyvip0` with
    /// the VIP as /32 or /128 (k0s's `ensureDummyInterface`, no sysctls),
    /// then keepalived with the VRRP instance, the notify commands and the
    /// MASTER-only include, and the virtual servers listing the three
    /// apiservers (what k0s's reconciler renders when all are healthy).
    /// `delay_loop` in seconds as k0s prints it (`60`, `1`).
    pub fn start_legacy_ipvs(&mut self, i: usize, delay_loop: &str) -> Result<(), Error> {
        let c = self.controller(i)?.clone();
        let host = match self.vip {
            IpAddr::V4(ip) => format!("{ip}/32"),
            IpAddr::V6(ip) => format!("{ip}/128"),
        };
        self.lab
            .ip(&c.netns, ["link", "add", DUMMY_VIP_LINK, "type", "dummy"])?;
        self.lab
            .ip(&c.netns, ["addr", "add", &host, "dev", DUMMY_VIP_LINK])?;
        let mut instance = K0sInstance::new(self.family.vip_cidr(), AUTH_PASS);
        instance.unicast = Some((c.ip, self.peers(i)));
        let ips: Vec<IpAddr> = self.controllers.iter().map(|c| c.ip).collect();
        let vs = render_k0s_virtual_servers(
            &[K0sVirtualServer::new(self.vip, delay_loop)],
            API_PORT,
            &ips,
        );
        let keepalived = Keepalived::start_k0s_ipvs(&self.lab, &c.netns, &instance, &vs)?;
        self.legacy[i] = Some(LegacyController {
            keepalived,
            haproxy: None,
        });
        Ok(())
    }

    /// Everything controller `i`'s keepalived logged (empty if none runs).
    pub fn legacy_log(&self, i: usize) -> String {
        self.legacy
            .get(i)
            .and_then(Option::as_ref)
            .map(|l| l.keepalived.log())
            .unwrap_or_default()
    }

    /// Whether controller `i` runs keepalived (k0s before the upgrade).
    pub fn legacy_running(&self, i: usize) -> bool {
        self.legacy.get(i).is_some_and(Option::is_some)
    }

    /// The other controllers' addresses (unicast peers of `i`).
    fn peers(&self, i: usize) -> Vec<IpAddr> {
        self.controllers
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .map(|(_, o)| o.ip)
            .collect()
    }

    /// Writes controller `i`'s configuration: [`ipvs_agent_config`].
    pub fn write_ipvs_config(&self, i: usize, delay_loop: &str) -> Result<(), Error> {
        let c = self.controller(i)?;
        write(
            &c.config,
            &ipvs_agent_config(c, &self.peers(i), self.family, delay_loop),
        )
    }

    /// Writes controller `i`'s configuration back to the proxy mode's
    /// ([`agent_config`]).
    pub fn write_proxy_config(&self, i: usize) -> Result<(), Error> {
        let c = self.controller(i)?;
        write(&c.config, &agent_config(c, self.family))
    }

    /// Sends `signal` to controller `i`'s keepalived only (its haproxy and
    /// REDIRECT rule stay): SIGKILL is a keepalived crash.
    pub fn signal_legacy(&self, i: usize, signal: Signal) -> Result<(), Error> {
        let legacy = self
            .legacy
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::Invalid(format!("controller {i} runs no keepalived")))?;
        Ok(self.lab.signal(legacy.keepalived.child, signal)?)
    }

    /// Appends (`-A`) or deletes (`-D`) k0s's REDIRECT rule in `netns`,
    /// spelt as k0s runs it (no `-C` first).
    fn k0s_redirect(&self, netns: &str, op: &str) -> Result<(), Error> {
        let vip = self.vip.to_string();
        let port = API_PORT.to_string();
        let to_port = PROXY_PORT.to_string();
        self.lab.exec_in(
            netns,
            self.family.iptables(),
            [
                "-t",
                "nat",
                op,
                "PREROUTING",
                "-p",
                "tcp",
                "-d",
                &vip,
                "--dport",
                &port,
                "-j",
                "REDIRECT",
                "--to-port",
                &to_port,
            ],
        )?;
        Ok(())
    }

    /// Stops controller `i`'s keepalived (SIGTERM: it hands the VIP over)
    /// and haproxy and deletes the REDIRECT rule, as turning k0s's CPLB off
    /// does.
    pub fn stop_legacy(&mut self, i: usize, timeout: Duration) -> Result<(), Error> {
        let legacy = self
            .legacy
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| Error::Invalid(format!("controller {i} runs no keepalived")))?;
        self.lab.signal(legacy.keepalived.child, Signal::SIGTERM)?;
        self.lab.wait_child(legacy.keepalived.child, timeout)?;
        let c = self.controller(i)?;
        match legacy.haproxy {
            Some(haproxy) => {
                self.lab.kill(haproxy)?;
                self.k0s_redirect(&c.netns, "-D")?;
            }
            // k0s's Stop in IPVS mode deletes `dummyvip0`.
            None => {
                self.lab.ip(&c.netns, ["link", "del", DUMMY_VIP_LINK])?;
            }
        }
        Ok(())
    }

    /// Sets controller `i`'s LAN link up or down.
    pub fn set_link(&self, i: usize, up: bool) -> Result<(), Error> {
        let c = self.controller(i)?;
        Ok(self.lab.set_host_link(&c.name, up)?)
    }

    /// Detaches controller `i` from the bridge (carrier stays up), or
    /// re-attaches it.
    pub fn set_partitioned(&self, i: usize, partitioned: bool) -> Result<(), Error> {
        let c = self.controller(i)?;
        if partitioned {
            Ok(self.lab.partition(&c.name)?)
        } else {
            Ok(self.lab.heal(&c.name)?)
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Graceful stop first, so agents remove what they installed even if
        // a namespace were to outlive the lab; bounded, then the lab kills.
        let running: Vec<ChildId> = self.agents.iter().flatten().copied().collect();
        for id in &running {
            let _ = self.lab.signal(*id, Signal::SIGTERM);
        }
        for id in running {
            let _ = self.lab.wait_child(id, Duration::from_secs(3));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The children of process `pid`, from `/proc/<pid>/task/*/children`.
pub fn children(pid: u32) -> Result<Vec<u32>, Error> {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    let entries = fs::read_dir(&tasks).map_err(|source| Error::File {
        path: tasks.clone(),
        source,
    })?;
    let mut children = Vec::new();
    for entry in entries.flatten() {
        let text = fs::read_to_string(entry.path().join("children")).unwrap_or_default();
        children.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    Ok(children)
}

fn bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

fn cidr_ip(cidr: &str) -> Result<IpAddr, Error> {
    cidr.split('/')
        .next()
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("bad address {cidr}")))
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    fs::write(path, text).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })
}

/// The k0s ClusterConfig (plus our `cplb:` section) of one controller.
pub fn agent_config(c: &Controller, family: Family) -> String {
    format!(
        "# cplb lab: controller {name} ({ip})\n\
         spec:\n  api:\n    port: {API_PORT}\n  network:\n    controlPlaneLoadBalancing:\n      enabled: true\n      type: Keepalived\n      keepalived:\n        vrrpInstances:\n          - virtualIPs: [\"{vip}\"]\n            authPass: \"{AUTH_PASS}\"\n            interface: {ifname}\n        userSpaceProxyBindPort: {PROXY_PORT}\n\
         cplb:\n  kubeconfig: {kubeconfig}\n  adminAddress: {ADMIN_ADDRESS}\n",
        name = c.name,
        ip = c.ip,
        vip = family.vip_cidr(),
        ifname = cplb_e2e::HOST_IFNAME,
        kubeconfig = c.kubeconfig.display(),
    )
}

/// k0s's IPVS-mode configuration of controller `c` (k0s's `cplb-ipvs`
/// integration test's setup): unicast VRRP to `peers` and
/// `virtualServers[0]` = the VIP with `delayLoop` (a Go duration, `2s`).
pub fn ipvs_agent_config(
    c: &Controller,
    peers: &[IpAddr],
    family: Family,
    delay_loop: &str,
) -> String {
    let vip = family.vip_cidr();
    let peers: Vec<String> = peers.iter().map(IpAddr::to_string).collect();
    format!(
        "# cplb lab: controller {name} ({ip}), IPVS mode\n\
         spec:\n  api:\n    port: {API_PORT}\n  network:\n    controlPlaneLoadBalancing:\n      enabled: true\n      type: Keepalived\n      keepalived:\n        vrrpInstances:\n          - virtualIPs: [\"{vip}\"]\n            authPass: {AUTH_PASS}\n            interface: {ifname}\n            unicastSourceIP: {ip}\n            unicastPeers: [{peers}]\n        virtualServers:\n          - ipAddress: {vip_ip}\n            delayLoop: {delay_loop}\n\
         cplb:\n  kubeconfig: {kubeconfig}\n  adminAddress: {ADMIN_ADDRESS}\n",
        name = c.name,
        ip = c.ip,
        peers = peers.join(", "),
        vip_ip = vip.split('/').next().unwrap_or(vip),
        ifname = cplb_e2e::HOST_IFNAME,
        kubeconfig = c.kubeconfig.display(),
    )
}

/// The `cplb` binary: `$CPLB_BIN`; else `cplb` next to the running
/// executable (tests run from `target/<profile>/deps/`); else built with
/// `$CARGO build -p cplb --bins` (`cplb` and `cplb-supervisor`) for the
/// same profile and target dir.
pub fn locate_cplb() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("CPLB_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| Error::Binary(e.to_string()))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| Error::Binary(format!("{} has no directory", exe.display())))?;
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let candidate = dir.join("cplb");
    if candidate.is_file() {
        return Ok(candidate);
    }
    let target_dir = dir
        .parent()
        .ok_or_else(|| Error::Binary(format!("{} is not in a target dir", dir.display())))?;
    let profile = dir
        .file_name()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "cplb", "--bins", "--target-dir"])
        .arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .status()
        .map_err(|e| Error::Binary(format!("cargo: {e}")))?;
    if status.success() && candidate.is_file() {
        Ok(candidate)
    } else {
        Err(Error::Binary(format!(
            "`cargo build -p cplb` failed ({status}); set CPLB_BIN"
        )))
    }
}
