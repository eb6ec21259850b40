//! Why the agent could not start, or stopped with an error.

use std::net::SocketAddr;

use cplb_vrrp::io::driver;

use crate::config::Problem;
use crate::netfilter::NetfilterError;

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration cannot run (on this host): every problem, as
    /// `cplb validate` prints them.
    #[error("the configuration cannot run: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Config(Vec<Problem>),
    /// The VRRP driver did not start.
    #[error("VRRP: {0}")]
    Vrrp(#[from] driver::DriverError),
    /// Netlink could not be opened.
    #[error("netlink: {0}")]
    Netlink(#[from] cplb_vrrp::io::netlink::NetlinkError),
    /// The proxy could not listen.
    #[error("proxy: {0}")]
    Proxy(#[from] cplb_proxy::ProxyError),
    /// The reconciler's settings can never work.
    #[error("reconciler: {0}")]
    Reconciler(#[from] cplb_reconciler::Error),
    /// The REDIRECT rules could not be installed.
    #[error("netfilter: {0}")]
    Netfilter(#[from] NetfilterError),
    /// IPVS mode could not set up or tear down its kernel objects.
    #[error("IPVS: {0}")]
    Ipvs(#[from] cplb_ipvs::Error),
    /// The admin endpoint could not listen.
    #[error("cannot listen on the admin address {address}: {source}")]
    Admin {
        /// The configured address.
        address: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("signals: {0}")]
    Signals(std::io::Error),
    /// A task of the agent ended unexpectedly.
    #[error("{0} stopped unexpectedly")]
    Crashed(&'static str),
    /// Another agent runs in this network namespace (it holds the lock).
    #[error("{0}")]
    Lock(#[from] crate::lock::LockError),
    /// A port the agent needs is taken by another process.
    #[error("cannot listen on {address}: it is in use by {owner}")]
    PortInUse {
        /// The address.
        address: SocketAddr,
        /// Who has it ("pid N (name)", or "another process" when unknown).
        owner: String,
    },
    /// Teardown left something behind.
    #[error("teardown incomplete: {0}")]
    Teardown(String),
}

impl RunError {
    /// Whether restarting cannot help (or would do harm: another agent or
    /// program holds what this one needs, and a restart loop would run
    /// `ExecStopPost=cplb release` against it): the configuration is refused (exit
    /// 78, EX_CONFIG, which the unit's `RestartPreventExitStatus=` honours).
    /// The plan catches these before anything starts; the VRRP driver's own
    /// configuration checks are the backstop.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            RunError::Config(_)
                | RunError::Lock(crate::lock::LockError::Held { .. })
                | RunError::PortInUse { .. }
                | RunError::Ipvs(cplb_ipvs::Error::NotAvailable(_))
                | RunError::Vrrp(
                    driver::DriverError::Config { .. } | driver::DriverError::DuplicateVrid { .. }
                )
        )
    }
}
