//! End-to-end tests of cplb on real network namespaces.
//!
//! This library is the lab those tests run in: a [`Lab`] builds a small LAN
//! out of Linux network namespaces (one namespace holding a Linux bridge,
//! host namespaces joined to it by veth pairs), runs processes inside the
//! hosts, reads back what the kernel holds, and tears all of it down when it
//! is dropped, also when a test fails or panics.
//!
//! Every namespace a lab creates is named `cplbt-<pid>-<n>-<name>`, so two
//! labs (in one process or in parallel test binaries) never collide, and
//! [`cleanup_stale`] can remove what a killed test run left behind. Traffic
//! stays inside these namespaces: addresses come from the documentation
//! ranges 192.0.2.0/24 and 2001:db8::/64.
//!
//! The setup uses `ip` from iproute2 through [`std::process::Command`]; a
//! test that wants to act from its own process inside a namespace (open a
//! socket, talk netlink) uses [`in_netns`], which runs a closure on a fresh
//! thread that has entered the namespace.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::net::{IpAddr, Ipv6Addr};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

pub mod keepalived;

/// Every namespace this harness creates starts with this.
pub const NETNS_PREFIX: &str = "cplbt-";

/// The interface name each host sees for its LAN port.
pub const HOST_IFNAME: &str = "eth0";

/// The bridge inside the bridge namespace.
pub const BRIDGE_IFNAME: &str = "br0";

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command could not be started at all (missing binary, ...).
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// `ip -j` printed something that is not the JSON we expect.
    #[error("cannot parse the output of {command}: {source}")]
    Json {
        /// The command line.
        command: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A condition did not become true before its deadline.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        waited: Duration,
    },
    /// Entering a namespace from this process failed.
    #[error("cannot enter network namespace {netns}: {source}")]
    Setns {
        /// The namespace name.
        netns: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The closure run by [`in_netns`] panicked.
    #[error("the closure run in network namespace {netns} panicked")]
    ThreadPanicked {
        /// The namespace name.
        netns: String,
    },
    /// A host or child that this lab does not know.
    #[error("unknown {0}")]
    Unknown(String),
    /// A required tool is missing.
    #[error("required tool {tool} not found; install the Debian package {package}")]
    MissingTool {
        /// The binary.
        tool: &'static str,
        /// The Debian package providing it.
        package: &'static str,
    },
}

/// One host on the lab LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The short name given to [`Lab::add_host`].
    pub name: String,
    /// The full network namespace name.
    pub netns: String,
    /// The host's LAN interface, inside `netns`.
    pub ifname: String,
    /// The peer end of the veth pair, a port of the bridge.
    pub bridge_port: String,
    /// The IPv4 address given to the host, if any.
    pub ipv4: Option<IpAddr>,
    /// The IPv6 address given to the host, if any.
    pub ipv6: Option<IpAddr>,
}

/// An address on an interface, as `ip -j addr` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The kernel marks the second and later address of one subnet as
    /// secondary (IPv4 only).
    pub secondary: bool,
    /// Remaining valid lifetime in seconds; `None` for "forever".
    pub valid_lft: Option<u64>,
    /// Remaining preferred lifetime in seconds; `None` for "forever".
    pub preferred_lft: Option<u64>,
    /// Whether the address skipped duplicate address detection (IPv6).
    pub nodad: bool,
    /// Whether the address is still tentative (IPv6 DAD not finished).
    pub tentative: bool,
}

/// An interface, as `ip -j link` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub ifindex: u32,
    /// Hardware address.
    pub mac: [u8; 6],
    /// Carrier present.
    pub lower_up: bool,
}

/// An IPv6 address label entry, as `ip -j addrlabel` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrLabel {
    /// The prefix the label applies to.
    pub prefix: IpAddr,
    /// Its length.
    pub prefix_len: u8,
    /// The label.
    pub label: u32,
}

/// A handle on a process started with [`Lab::spawn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildId(usize);

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A LAN of network namespaces, deleted with everything in it on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    bridge_netns: String,
    hosts: Vec<Host>,
    /// Each host's addresses in CIDR form, to recreate its link.
    cidrs: BTreeMap<String, (Option<String>, Option<String>)>,
    /// Every namespace created, in creation order, deleted in reverse.
    namespaces: Vec<String>,
    children: Mutex<BTreeMap<usize, Child>>,
    next_child: AtomicU32,
}

impl Lab {
    /// Creates a lab: the bridge namespace with a bridge `br0` that is up.
    ///
    /// Fails early with [`LabError::MissingTool`] when `ip` is not there.
    pub fn new() -> Result<Lab, LabError> {
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        Lab::with_prefix(&format!("{NETNS_PREFIX}{}-{n}-", std::process::id()))
    }

    /// Like [`Lab::new`], with a namespace prefix chosen by the caller (a
    /// demo's fixed, well-known one). The caller makes sure no namespace with
    /// this prefix exists yet: [`cleanup_stale`] does not know it.
    pub fn with_prefix(prefix: &str) -> Result<Lab, LabError> {
        require_tool("ip", "iproute2")?;
        let prefix = prefix.to_owned();
        let mut lab = Lab {
            bridge_netns: format!("{prefix}br"),
            prefix,
            hosts: Vec::new(),
            cidrs: BTreeMap::new(),
            namespaces: Vec::new(),
            children: Mutex::new(BTreeMap::new()),
            next_child: AtomicU32::new(0),
        };
        let bridge_netns = lab.bridge_netns.clone();
        lab.create_netns(&bridge_netns)?;
        lab.ip(
            &bridge_netns,
            ["link", "add", BRIDGE_IFNAME, "type", "bridge"],
        )?;
        // No STP and no forwarding delay: ports forward as soon as they are up.
        lab.ip(
            &bridge_netns,
            [
                "link",
                "set",
                BRIDGE_IFNAME,
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ],
        )?;
        lab.ip(&bridge_netns, ["link", "set", BRIDGE_IFNAME, "up"])?;
        Ok(lab)
    }

    /// The unique prefix of every namespace of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace holding the bridge.
    pub fn bridge_netns(&self) -> &str {
        &self.bridge_netns
    }

    /// The hosts added so far.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// A host by its short name.
    pub fn host(&self, name: &str) -> Result<&Host, LabError> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| LabError::Unknown(format!("host {name}")))
    }

    /// Adds a host namespace `name` joined to the bridge by a veth pair.
    ///
    /// `ipv4` and `ipv6` are in CIDR form (`192.0.2.1/24`,
    /// `2001:db8::1/64`); IPv6 addresses are added `nodad` so they are usable
    /// at once. Loopback and both veth ends are brought up. `name` must be
    /// short: the bridge port is called `p-<name>` and interface names have
    /// at most 15 bytes.
    pub fn add_host(
        &mut self,
        name: &str,
        ipv4: Option<&str>,
        ipv6: Option<&str>,
    ) -> Result<Host, LabError> {
        let netns = format!("{}h-{name}", self.prefix);
        let bridge_port = format!("p-{name}");
        self.create_netns(&netns)?;
        self.connect(&netns, &bridge_port, ipv4, ipv6)?;
        self.cidrs.insert(
            name.to_owned(),
            (ipv4.map(str::to_owned), ipv6.map(str::to_owned)),
        );
        let host = Host {
            name: name.to_owned(),
            netns,
            ifname: HOST_IFNAME.to_owned(),
            bridge_port,
            ipv4: ipv4.and_then(cidr_ip),
            ipv6: ipv6.and_then(cidr_ip),
        };
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Creates the veth pair joining `netns` to the bridge, with the host's
    /// addresses, and brings it up.
    fn connect(
        &self,
        netns: &str,
        bridge_port: &str,
        ipv4: Option<&str>,
        ipv6: Option<&str>,
    ) -> Result<(), LabError> {
        let bridge_netns = &self.bridge_netns;
        // Both ends are created inside namespaces of ours: nothing ever
        // appears in the namespace the tests run in.
        self.ip(
            bridge_netns,
            [
                "link",
                "add",
                bridge_port,
                "type",
                "veth",
                "peer",
                "name",
                HOST_IFNAME,
                "netns",
                netns,
            ],
        )?;
        self.ip(
            bridge_netns,
            ["link", "set", bridge_port, "master", BRIDGE_IFNAME],
        )?;
        self.ip(bridge_netns, ["link", "set", bridge_port, "up"])?;
        self.ip(netns, ["link", "set", "lo", "up"])?;
        if let Some(cidr) = ipv4 {
            self.ip(netns, ["addr", "add", cidr, "dev", HOST_IFNAME])?;
        }
        if let Some(cidr) = ipv6 {
            self.ip(netns, ["addr", "add", cidr, "dev", HOST_IFNAME, "nodad"])?;
        }
        self.ip(netns, ["link", "set", HOST_IFNAME, "up"])?;
        Ok(())
    }

    /// Deletes a host's LAN interface and creates it again, with the same
    /// name and addresses but a new interface index, as a network restart
    /// does.
    pub fn recreate_link(&self, host: &str) -> Result<(), LabError> {
        let h = self.host(host)?;
        let (ipv4, ipv6) = self.cidrs.get(host).cloned().unwrap_or_default();
        // Deleting one end of a veth pair deletes both.
        self.ip(&self.bridge_netns, ["link", "del", &h.bridge_port])?;
        self.connect(&h.netns, &h.bridge_port, ipv4.as_deref(), ipv6.as_deref())
    }

    /// Runs `ip -n <netns> <args>` and returns its stdout.
    pub fn ip<I, S>(&self, netns: &str, args: I) -> Result<String, LabError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(netns).args(args);
        let out = run(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command that runs `program` inside `netns` (`ip netns exec`), for
    /// the caller to add arguments to and run or [`Lab::spawn`].
    pub fn command_in(&self, netns: &str, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(program);
        cmd
    }

    /// Runs `program args` inside `netns` to completion; fails when it exits
    /// non-zero.
    pub fn exec_in<I, S>(&self, netns: &str, program: &str, args: I) -> Result<Output, LabError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command_in(netns, program);
        cmd.args(args);
        run(&mut cmd)
    }

    /// Starts a long-running process (from [`Lab::command_in`]); the lab
    /// kills it on drop if it is still running. `ip netns exec` execs the
    /// program, so the child's pid is the program's.
    pub fn spawn(&self, mut cmd: Command) -> Result<ChildId, LabError> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: describe(&cmd),
                source,
            })?;
        let id = self.next_child.fetch_add(1, Ordering::Relaxed) as usize;
        self.lock_children().insert(id, child);
        Ok(ChildId(id))
    }

    /// The pid of a spawned child.
    pub fn child_pid(&self, id: ChildId) -> Result<u32, LabError> {
        self.lock_children()
            .get(&id.0)
            .map(Child::id)
            .ok_or_else(|| LabError::Unknown(format!("child {}", id.0)))
    }

    /// Sends `signal` to a spawned child (SIGKILL, SIGSTOP, SIGTERM ...).
    pub fn signal(&self, id: ChildId, signal: nix::sys::signal::Signal) -> Result<(), LabError> {
        let pid = self.child_pid(id)?;
        let pid = nix::unistd::Pid::from_raw(
            i32::try_from(pid).map_err(|_| LabError::Unknown(format!("pid {pid}")))?,
        );
        nix::sys::signal::kill(pid, signal).map_err(|errno| LabError::Spawn {
            command: format!("kill -{signal} {pid}"),
            source: errno.into(),
        })
    }

    /// Kills a spawned child and waits for it; returns its output if it was
    /// started with piped stdout/stderr.
    pub fn kill(&self, id: ChildId) -> Result<Output, LabError> {
        let mut child = self
            .lock_children()
            .remove(&id.0)
            .ok_or_else(|| LabError::Unknown(format!("child {}", id.0)))?;
        // It may have exited already: kill then reports an error we ignore.
        let _ = child.kill();
        child.wait_with_output().map_err(|source| LabError::Spawn {
            command: format!("wait for child {}", id.0),
            source,
        })
    }

    /// Waits (bounded) for a spawned child to exit by itself.
    pub fn wait_child(&self, id: ChildId, timeout: Duration) -> Result<Output, LabError> {
        wait_for(&format!("child {} to exit", id.0), timeout, || {
            let mut children = self.lock_children();
            match children.get_mut(&id.0).map(Child::try_wait) {
                Some(Ok(Some(_))) => Some(Ok(())),
                Some(Ok(None)) => None,
                Some(Err(e)) => Some(Err(e)),
                None => Some(Ok(())),
            }
        })?
        .map_err(|source| LabError::Spawn {
            command: format!("wait for child {}", id.0),
            source,
        })?;
        self.kill(id)
    }

    /// Sets a host's LAN interface up or down (inside the host).
    pub fn set_host_link(&self, host: &str, up: bool) -> Result<(), LabError> {
        let h = self.host(host)?;
        self.ip(
            &h.netns,
            ["link", "set", &h.ifname, if up { "up" } else { "down" }],
        )
        .map(drop)
    }

    /// Cuts a host off the LAN while its link stays up (carrier on): the
    /// host's veth peer is detached from the bridge, so its frames go
    /// nowhere. This is a partition, not a link failure; see
    /// [`Lab::cut_cable`] for that. (Setting the bridge port to the blocking
    /// state would be the textbook way, but some kernels accept and ignore
    /// it with STP off.)
    pub fn partition(&self, host: &str) -> Result<(), LabError> {
        let h = self.host(host)?;
        self.ip(
            &self.bridge_netns,
            ["link", "set", &h.bridge_port, "nomaster"],
        )
        .map(drop)
    }

    /// Undoes [`Lab::partition`].
    pub fn heal(&self, host: &str) -> Result<(), LabError> {
        let h = self.host(host)?;
        self.ip(
            &self.bridge_netns,
            ["link", "set", &h.bridge_port, "master", BRIDGE_IFNAME],
        )
        .map(drop)
    }

    /// Sets a host's bridge port down: the host loses carrier, like a
    /// pulled cable.
    pub fn cut_cable(&self, host: &str) -> Result<(), LabError> {
        let h = self.host(host)?;
        self.ip(&self.bridge_netns, ["link", "set", &h.bridge_port, "down"])
            .map(drop)
    }

    /// Undoes [`Lab::cut_cable`].
    pub fn plug_cable(&self, host: &str) -> Result<(), LabError> {
        let h = self.host(host)?;
        self.ip(&self.bridge_netns, ["link", "set", &h.bridge_port, "up"])
            .map(drop)
    }

    /// The addresses on `ifname` in `netns`, read from the kernel.
    pub fn addresses(&self, netns: &str, ifname: &str) -> Result<Vec<IfAddr>, LabError> {
        let json = self.ip(netns, ["-j", "addr", "show", "dev", ifname])?;
        parse_ip_addr_json(&json).map_err(|source| LabError::Json {
            command: format!("ip -n {netns} -j addr show dev {ifname}"),
            source,
        })
    }

    /// Index, MAC and state of `ifname` in `netns`.
    pub fn link(&self, netns: &str, ifname: &str) -> Result<LinkInfo, LabError> {
        let json = self.ip(netns, ["-j", "link", "show", "dev", ifname])?;
        let command = || format!("ip -n {netns} -j link show dev {ifname}");
        let links: Vec<IpLinkInfoJson> =
            serde_json::from_str(&json).map_err(|source| LabError::Json {
                command: command(),
                source,
            })?;
        let link = links
            .into_iter()
            .next()
            .ok_or_else(|| LabError::Unknown(format!("interface {ifname} in {netns}")))?;
        let mac = parse_mac(&link.address)
            .ok_or_else(|| LabError::Unknown(format!("MAC {}", link.address)))?;
        Ok(LinkInfo {
            ifindex: link.ifindex,
            mac,
            lower_up: link.flags.iter().any(|f| f == "LOWER_UP"),
        })
    }

    /// The IPv6 link-local address of `ifname` in `netns`, once duplicate
    /// address detection has finished with it (waits at most `timeout`).
    pub fn link_local(
        &self,
        netns: &str,
        ifname: &str,
        timeout: Duration,
    ) -> Result<Ipv6Addr, LabError> {
        wait_for(
            &format!("a usable link-local address on {ifname} in {netns}"),
            timeout,
            || {
                self.addresses(netns, ifname)
                    .ok()?
                    .into_iter()
                    .find_map(|a| match a.ip {
                        IpAddr::V6(ip) if ip.is_unicast_link_local() && !a.tentative => Some(ip),
                        _ => None,
                    })
            },
        )
    }

    /// Whether `ip` is on `ifname` in `netns` (read from the kernel).
    pub fn has_address(&self, netns: &str, ifname: &str, ip: IpAddr) -> Result<bool, LabError> {
        Ok(self.addresses(netns, ifname)?.iter().any(|a| a.ip == ip))
    }

    /// The IPv6 address label table of `netns`.
    pub fn addr_labels(&self, netns: &str) -> Result<Vec<AddrLabel>, LabError> {
        let json = self.ip(netns, ["-j", "addrlabel", "list"])?;
        parse_addrlabel_json(&json).map_err(|source| LabError::Json {
            command: format!("ip -n {netns} -j addrlabel list"),
            source,
        })
    }

    /// Pings `dst` from `netns` (one packet, bounded wait); true if answered.
    pub fn ping(&self, netns: &str, dst: IpAddr) -> Result<bool, LabError> {
        require_tool("ping", "iputils-ping")?;
        let mut cmd = self.command_in(netns, "ping");
        cmd.args(["-n", "-q", "-c", "1", "-W", "2"])
            .arg(dst.to_string());
        let out = cmd.output().map_err(|source| LabError::Spawn {
            command: describe(&cmd),
            source,
        })?;
        Ok(out.status.success())
    }

    /// The names of the namespaces this lab created and still holds.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    fn create_netns(&mut self, name: &str) -> Result<(), LabError> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        self.namespaces.push(name.to_owned());
        Ok(())
    }

    fn lock_children(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, Child>> {
        // A panic while holding the lock leaves the map intact; keep going so
        // Drop can still kill the children.
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let children = std::mem::take(&mut *self.lock_children());
        for (_, mut child) in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting a namespace destroys its interfaces and with them the
        // veth peers in the other namespaces.
        for netns in self.namespaces.drain(..).rev() {
            if let Err(e) = delete_netns(&netns) {
                eprintln!("cplb-e2e: cannot delete network namespace {netns}: {e}");
            }
        }
    }
}

/// The lock file `cplb run` takes in a network namespace other than the
/// host's (`/run/cplb-netns-<inode>.lock`, see the agent's `lock.rs`).
pub fn agent_lock_file(netns: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(format!("/run/netns/{netns}")).ok()?.ino();
    Some(std::path::PathBuf::from(format!(
        "/run/cplb-netns-{inode}.lock"
    )))
}

/// Deletes the namespace `netns` and the lock file an agent run inside it
/// left in `/run` (nothing else can use it: the inode dies with the
/// namespace and a new one may reuse the number).
pub fn delete_netns(netns: &str) -> Result<(), LabError> {
    let lock = agent_lock_file(netns);
    run(Command::new("ip").args(["netns", "del", netns]))?;
    if let Some(lock) = lock {
        match std::fs::remove_file(&lock) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("cplb-e2e: cannot remove {}: {e}", lock.display()),
        }
    }
    Ok(())
}

/// All network namespaces whose name starts with `prefix`.
pub fn list_netns(prefix: &str) -> Result<Vec<String>, LabError> {
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        // Lines look like `name` or `name (id: 3)`.
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// Deletes namespaces left by labs of processes that no longer exist (a
/// test run that was SIGKILLed cannot run its Drop guards). Returns the
/// names deleted.
pub fn cleanup_stale() -> Result<Vec<String>, LabError> {
    let mut deleted = Vec::new();
    for name in list_netns(NETNS_PREFIX)? {
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_netns(&name)?;
        deleted.push(name);
    }
    Ok(deleted)
}

/// Runs `f` on a fresh thread that has entered the network namespace
/// `netns`, and returns its result. Sockets created in `f` (raw, netlink,
/// ...) belong to that namespace for their whole life, also after they are
/// handed back to another thread. To register them with a tokio runtime
/// running elsewhere, enter its handle inside `f` (`let _guard =
/// handle.enter();`), or build a runtime inside `f`. `f` may borrow (the
/// thread is scoped), e.g. the [`Lab`] to check the kernel's view.
pub fn in_netns<T, F>(netns: &str, f: F) -> Result<T, LabError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = format!("/run/netns/{netns}");
    let file = File::open(&path).map_err(|source| LabError::Setns {
        netns: netns.to_owned(),
        source,
    })?;
    let joined = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // setns(2) changes only the calling thread: this throwaway one.
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                Ok::<T, std::io::Error>(f())
            })
            .join()
    });
    match joined {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(LabError::Setns {
            netns: netns.to_owned(),
            source,
        }),
        Err(_) => Err(LabError::ThreadPanicked {
            netns: netns.to_owned(),
        }),
    }
}

/// Polls `probe` every 50 ms until it yields `Some`, for at most `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, LabError> {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if start.elapsed() >= timeout {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `condition` until it is true, for at most `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<(), LabError> {
    wait_for(what, timeout, || condition().then_some(()))
}

/// Fails with [`LabError::MissingTool`] unless `tool` is on the PATH.
pub fn require_tool(tool: &'static str, package: &'static str) -> Result<(), LabError> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    if found {
        Ok(())
    } else {
        Err(LabError::MissingTool { tool, package })
    }
}

fn run(cmd: &mut Command) -> Result<Output, LabError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: describe(cmd),
            source,
        })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(LabError::Command {
            command: describe(cmd),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn cidr_ip(cidr: &str) -> Option<IpAddr> {
    cidr.split('/').next()?.parse().ok()
}

#[derive(Deserialize)]
struct IpLinkJson {
    #[serde(default)]
    addr_info: Vec<IpAddrJson>,
}

#[derive(Deserialize)]
struct IpAddrJson {
    local: IpAddr,
    prefixlen: u8,
    #[serde(default)]
    secondary: bool,
    #[serde(default)]
    nodad: bool,
    #[serde(default)]
    tentative: bool,
    // 4294967295 is "forever".
    valid_life_time: Option<u64>,
    preferred_life_time: Option<u64>,
}

const LIFETIME_FOREVER: u64 = u32::MAX as u64;

/// Parses the output of `ip -j addr show [dev X]` into addresses.
pub fn parse_ip_addr_json(json: &str) -> Result<Vec<IfAddr>, serde_json::Error> {
    let links: Vec<IpLinkJson> = serde_json::from_str(json)?;
    let finite = |lft: Option<u64>| lft.filter(|&s| s != LIFETIME_FOREVER);
    Ok(links
        .into_iter()
        .flat_map(|l| l.addr_info)
        .map(|a| IfAddr {
            ip: a.local,
            prefix_len: a.prefixlen,
            secondary: a.secondary,
            valid_lft: finite(a.valid_life_time),
            preferred_lft: finite(a.preferred_life_time),
            nodad: a.nodad,
            tentative: a.tentative,
        })
        .collect())
}

#[derive(Deserialize)]
struct IpLinkInfoJson {
    ifindex: u32,
    address: String,
    #[serde(default)]
    flags: Vec<String>,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[derive(Deserialize)]
struct AddrLabelJson {
    address: IpAddr,
    prefixlen: u8,
    label: u32,
}

/// Parses the output of `ip -j addrlabel list`.
pub fn parse_addrlabel_json(json: &str) -> Result<Vec<AddrLabel>, serde_json::Error> {
    let labels: Vec<AddrLabelJson> = serde_json::from_str(json)?;
    Ok(labels
        .into_iter()
        .map(|l| AddrLabel {
            prefix: l.address,
            prefix_len: l.prefixlen,
            label: l.label,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_addr_json() {
        // Trimmed output of `ip -j addr show dev eth0` (iproute2 6.1).
        let json = r#"[{"ifindex":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP"],
          "addr_info":[
            {"family":"inet","local":"192.0.2.1","prefixlen":24,"scope":"global","label":"eth0",
             "valid_life_time":4294967295,"preferred_life_time":4294967295},
            {"family":"inet","local":"192.0.2.100","prefixlen":24,"scope":"global","secondary":true,
             "label":"eth0","valid_life_time":3,"preferred_life_time":3},
            {"family":"inet6","local":"2001:db8::1","prefixlen":64,"scope":"global","nodad":true,
             "valid_life_time":4294967295,"preferred_life_time":4294967295}]}]"#;
        let addrs = parse_ip_addr_json(json).unwrap();
        assert_eq!(addrs.len(), 3);
        assert_eq!(addrs[0].ip, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert!(!addrs[0].secondary);
        assert_eq!(addrs[0].valid_lft, None);
        assert!(addrs[1].secondary);
        assert_eq!(addrs[1].valid_lft, Some(3));
        assert!(addrs[2].nodad);
        assert_eq!(addrs[2].prefix_len, 64);
    }

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("02:00:5e:00:01:0a"), Some([2, 0, 0x5e, 0, 1, 10]));
        assert_eq!(parse_mac("02:00:5e:00:01"), None);
        assert_eq!(parse_mac("02:00:5e:00:01:0a:0b"), None);
        assert_eq!(parse_mac("zz:00:5e:00:01:0a"), None);
    }

    #[test]
    fn parses_addrlabel_json() {
        let json = r#"[{"address":"2001:db8::100","prefixlen":128,"label":10000},
                       {"address":"::1","prefixlen":128,"label":0}]"#;
        let labels = parse_addrlabel_json(json).unwrap();
        assert_eq!(labels[0].label, 10000);
        assert_eq!(labels[1].prefix, "::1".parse::<IpAddr>().unwrap());
    }
}
