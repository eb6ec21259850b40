//! The layer-4 load balancer that k0s runs on port 6444: accepts the
//! connections an iptables REDIRECT sends from VIP:6443 and forwards them
//! round-robin to the healthy apiservers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cplb_proxy::ProxyError> {
//! use cplb_proxy::{Proxy, ProxyConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! let proxy = Proxy::bind(ProxyConfig::with_local_apiserver(6443)).await?;
//! let backends = proxy.backends_handle();
//! let shutdown = CancellationToken::new();
//! let task = tokio::spawn(proxy.run(shutdown.clone()));
//! backends.set(vec!["192.0.2.10:6443".parse().unwrap()]);
//! shutdown.cancel(); // stop accepting, drain, then close
//! # let _ = task.await;
//! # Ok(()) }
//! ```
//!
//! The agent runs it on a thread of its own instead, with
//! [`ProxyThread::spawn`] (same configuration, same handle), so that proxy
//! load never delays the VRRP adverts of the caller's runtime.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod backends;
mod clock;
mod conn;
mod copy;
mod deadline;
mod error;
mod listener;
mod logs;
mod shared;
pub mod stats;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use error::ProxyError;
pub use stats::{BackendStats, ConnectErrorReason, ProxyStats};

use crate::backends::BackendSet;
use crate::shared::Shared;

/// Port k0s's proxy listens on.
pub const DEFAULT_PORT: u16 = 6444;

/// Default [`ProxyConfig::connect_hedge`]: far above a LAN's (or a
/// region's) round trip, far below the kernel's 1 s SYN retransmission.
pub const DEFAULT_CONNECT_HEDGE: Duration = Duration::from_millis(200);

/// How bytes are moved between the two sockets of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataPath {
    /// `Copy` for small messages; a direction whose read fills the whole
    /// buffer switches to `splice(2)` through a pipe taken from a per-thread
    /// pool only while data is in flight: no copy through user space, no
    /// memory per idle connection. Falls back to `Copy` if no pipe is free.
    #[default]
    Splice,
    /// `read`/`write` through one per-thread buffer, allocating per-connection
    /// memory only while a write is blocked.
    Copy,
}

/// Validated proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Address to listen on; `[::]` gives a dual-stack wildcard socket.
    pub listen: SocketAddr,
    /// Backends used until the first update (the local apiserver).
    pub initial_backends: Vec<SocketAddr>,
    /// Bound on each connect attempt to a backend.
    pub connect_timeout: Duration,
    /// When a connect attempt has not finished after this long and another
    /// backend is left to try, the proxy starts a connect to that one too
    /// and takes whichever connects first (the other attempt is dropped and
    /// counted as a timed-out connect, which puts its backend in the
    /// passive-health skip window). A LAN answers a SYN within a
    /// millisecond and the kernel retransmits a lost one only after a
    /// second, so an unanswered SYN after this delay most likely went to a
    /// host that is gone (a controller whose link went down, still in the
    /// backend set until the reconciler's next check fails): the client
    /// then waits this delay instead of `connect_timeout`. `None` (or a
    /// value not below `connect_timeout`) tries backends one after the
    /// other, each for up to `connect_timeout`.
    pub connect_hedge: Option<Duration>,
    /// How long a backend that failed to connect is skipped by new
    /// connections (`ZERO` disables passive health).
    pub passive_health_window: Duration,
    /// Time after which connections to a backend that left the set are
    /// closed; `None` keeps them open forever (k0s behaviour).
    pub removed_backend_grace: Option<Duration>,
    /// Close a connection after this long without bytes in either direction.
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive idle time on both legs.
    pub keepalive: Duration,
    /// How long `run` lets connections drain after shutdown is requested.
    pub drain_timeout: Duration,
    /// Maximum concurrent client connections; more wait in the accept queue.
    pub max_connections: usize,
    /// Maximum concurrent client connections from one source (an IPv4
    /// address or an IPv6 /64); more are refused at once with a reset and
    /// counted in [`ProxyStats::refused_source_limit`]. `0` disables the
    /// limit.
    ///
    /// Default: a quarter of the default `max_connections` (4096), so one
    /// host can never take every slot, and it takes four to do so. Local
    /// clients count too: with the OUTPUT rule, every process on this node
    /// that talks to VIP:6443 (kubelet, kube-proxy, the CNI, konnectivity)
    /// arrives from one local address (the VIP on the master, the node's
    /// address elsewhere), so they share one budget. They need tens of
    /// connections (kubelet multiplexes its watches over HTTP/2), far below
    /// 4096; a node whose local clients need more must raise it.
    pub max_connections_per_source: usize,
    /// Listen backlog.
    pub backlog: u32,
    /// Copy implementation.
    pub data_path: DataPath,
    /// When the client has already sent bytes by the time the proxy
    /// connects to a backend (a TLS ClientHello, usually), delay the ACK
    /// that completes the backend handshake so that it rides on those bytes
    /// (HAProxy's `option tcp-smart-connect`): one packet less, and the
    /// backend accepts a connection that already holds the request instead
    /// of waking up twice. A client that has sent nothing yet gets a plain
    /// connect, so servers that speak first are not delayed. On by default.
    pub smart_connect: bool,
}

impl ProxyConfig {
    /// Defaults with the given bootstrap backends, listening on `[::]:6444`.
    pub fn new(initial_backends: Vec<SocketAddr>) -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), DEFAULT_PORT),
            initial_backends,
            connect_timeout: Duration::from_secs(3),
            connect_hedge: Some(DEFAULT_CONNECT_HEDGE),
            passive_health_window: Duration::from_secs(5),
            removed_backend_grace: Some(Duration::from_secs(10)),
            idle_timeout: None,
            keepalive: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            max_connections: 16_384,
            max_connections_per_source: 4096,
            backlog: 4096,
            data_path: DataPath::default(),
            smart_connect: true,
        }
    }

    /// Defaults with the local apiserver as the only bootstrap backend:
    /// `127.0.0.1:<api_port>`, or `[::1]:<api_port>` on IPv6-only hosts.
    ///
    /// This probes the host (see [`local_apiserver`]); to keep
    /// configuration pure, call that once and pass its answer to
    /// [`ProxyConfig::new`] instead. Kept as a shorthand.
    pub fn with_local_apiserver(api_port: u16) -> Self {
        Self::new(vec![local_apiserver(api_port)])
    }
}

/// The local apiserver address: IPv4 loopback when the host has it, else
/// `[::1]`. Probes the host (binds a UDP socket to `127.0.0.1:0`).
pub fn local_apiserver(api_port: u16) -> SocketAddr {
    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let ip = if std::net::UdpSocket::bind(v4).is_ok() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    };
    SocketAddr::new(ip, api_port)
}

/// A bound proxy; call [`Proxy::run`] to serve.
#[derive(Debug)]
pub struct Proxy {
    listener: listener::Listener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Binds the listening socket. Must be called inside a tokio runtime.
    pub async fn bind(config: ProxyConfig) -> Result<Self, ProxyError> {
        Self::bind_or_adopt(config, None).await
    }

    /// Serves on `listener`, a socket made by [`listen`] (usually in a
    /// parent process that keeps it open while this one restarts) instead
    /// of binding one; it must listen on `config.listen`'s port. Must be
    /// called inside a tokio runtime.
    pub async fn adopt(
        config: ProxyConfig,
        listener: std::net::TcpListener,
    ) -> Result<Self, ProxyError> {
        Self::bind_or_adopt(config, Some(listener)).await
    }

    async fn bind_or_adopt(
        config: ProxyConfig,
        inherited: Option<std::net::TcpListener>,
    ) -> Result<Self, ProxyError> {
        let initial = BackendSet::new(config.initial_backends.iter().copied())
            .ok_or(ProxyError::NoInitialBackend)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ProxyError::NoRuntime)?;
        let (socket, local_addr) = match inherited {
            Some(listener) => listener::adopt(listener, config.listen)?,
            None => listener::bind(config.listen, config.backlog, config.keepalive)?,
        };
        let listener = listener::register(socket).map_err(|source| ProxyError::Bind {
            addr: local_addr,
            source,
        })?;
        tracing::info!(
            component = "proxy",
            listen = %local_addr,
            backends = ?initial.addrs(),
            data_path = ?config.data_path,
            "listening"
        );
        let shared = Arc::new(Shared::new(config, initial, runtime));
        Ok(Self {
            listener,
            local_addr,
            shared,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to replace the backend set; it stays valid after `run` ends.
    pub fn backends_handle(&self) -> BackendsHandle {
        BackendsHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Counters of every backend seen so far, sorted by address.
    pub fn stats(&self) -> Vec<BackendStats> {
        self.shared.stats()
    }

    /// Counters of the proxy as a whole.
    pub fn proxy_stats(&self) -> ProxyStats {
        self.shared.proxy_stats()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// connections drain for up to `drain_timeout`, closes the rest and
    /// returns once every connection task has ended.
    pub async fn run(self, shutdown: CancellationToken) {
        listener::serve(self.listener, Arc::clone(&self.shared), shutdown).await;
    }
}

/// The listening socket [`Proxy::bind`] would make for `config` (dual-stack
/// wildcard with the IPv4 fallback, `SO_REUSEADDR`, `TCP_NODELAY` and
/// keepalive inherited by accepted sockets, `config.backlog`), without
/// serving it: for a parent process that holds it while the process
/// serving it ([`Proxy::adopt`]) restarts, so that clients arriving
/// meanwhile wait in the backlog instead of being refused.
pub fn listen(config: &ProxyConfig) -> Result<std::net::TcpListener, ProxyError> {
    let (socket, _) = listener::bind(config.listen, config.backlog, config.keepalive)?;
    Ok(socket.into())
}

/// A proxy serving on a thread of its own; see [`ProxyThread::spawn`].
#[derive(Debug)]
pub struct ProxyThread {
    local_addr: SocketAddr,
    backends: BackendsHandle,
    finished: tokio::sync::oneshot::Receiver<()>,
}

impl ProxyThread {
    /// Binds and runs the proxy on a new thread (`cplb-proxy`) with a
    /// single-threaded tokio runtime, returning once it listens. Serving
    /// until `shutdown` is cancelled, then draining, as [`Proxy::run`].
    ///
    /// Why a thread of its own: on a multi-threaded runtime every new
    /// connection's task is handed between workers through shared queues
    /// and futex wake-ups; measured with `bench/proxy`, that cost about 4 µs
    /// of a short connection's 38 µs. One thread moves far more than a
    /// control plane needs (over 20,000 connections/s, 1.5 GiB/s), and the
    /// caller's runtime (VRRP adverts) stays unaffected by proxy load.
    pub async fn spawn(
        config: ProxyConfig,
        shutdown: CancellationToken,
    ) -> Result<ProxyThread, ProxyError> {
        Self::spawn_with(config, None, shutdown).await
    }

    /// [`ProxyThread::spawn`], serving on `inherited` (see [`Proxy::adopt`])
    /// when given instead of binding a socket of its own.
    pub async fn spawn_with(
        config: ProxyConfig,
        inherited: Option<std::net::TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<ProxyThread, ProxyError> {
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        // Sent to when the proxy has drained; dropped unsent if the thread
        // ends any other way (a panic).
        let (finished_tx, finished) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("cplb-proxy".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = bound_tx.send(Err(ProxyError::Thread(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match Proxy::bind_or_adopt(config, inherited).await {
                        Ok(proxy) => {
                            let bound = (proxy.local_addr(), proxy.backends_handle());
                            if bound_tx.send(Ok(bound)).is_ok() {
                                proxy.run(shutdown).await;
                                let _ = finished_tx.send(());
                            }
                        }
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(ProxyError::Thread)?;
        let (local_addr, backends) = bound_rx.await.map_err(|_| {
            ProxyError::Thread(std::io::Error::other("proxy thread ended before listening"))
        })??;
        Ok(ProxyThread {
            local_addr,
            backends,
            finished,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to replace the backend set and read counters.
    pub fn backends_handle(&self) -> BackendsHandle {
        self.backends.clone()
    }

    /// Resolves once the proxy has drained, or with an error if its thread
    /// died without draining (a panic).
    pub async fn join(self) -> Result<(), ProxyError> {
        self.finished.await.map_err(|_| {
            ProxyError::Thread(std::io::Error::other("proxy thread ended without draining"))
        })
    }
}

/// Cheap, cloneable handle used by the reconciler to swap backends and by
/// the agent to read counters.
#[derive(Debug, Clone)]
pub struct BackendsHandle {
    shared: Arc<Shared>,
}

impl BackendsHandle {
    /// Atomically replaces the backend set. New connections use it at once;
    /// connections in flight are untouched, except that those to removed
    /// backends are closed after the grace period. An empty list is ignored
    /// (the previous set stays) and `false` is returned.
    pub fn set(&self, addrs: Vec<SocketAddr>) -> bool {
        self.shared.set_backends(addrs)
    }

    /// The current backend set, sorted.
    pub fn current(&self) -> Vec<SocketAddr> {
        self.shared.current().addrs().to_vec()
    }

    /// Counters of every backend seen so far, sorted by address.
    pub fn stats(&self) -> Vec<BackendStats> {
        self.shared.stats()
    }

    /// Counters of the proxy as a whole (refused sources, clients without
    /// a backend, local connect failures).
    pub fn proxy_stats(&self) -> ProxyStats {
        self.shared.proxy_stats()
    }

    /// Backends of the current set that new connections skip (try last)
    /// because a connect to them failed within the passive-health window,
    /// or because they were [suspected](Self::suspect).
    pub fn skipped(&self) -> Vec<SocketAddr> {
        self.shared.skipped()
    }

    /// Skips (tries last) every backend of the current set at `ip` for
    /// `window`, as a failed connect would for the passive-health window,
    /// before any connect to it has failed: for a caller that knows the
    /// host has gone (the agent, when VRRP took over from a Master that fell
    /// silent on that address). `why` goes to the log. Returns the backends
    /// now skipped; a backend joining the set later is not affected.
    pub fn suspect(&self, ip: IpAddr, window: Duration, why: &str) -> Vec<SocketAddr> {
        self.shared.suspect(ip, window, why)
    }

    /// Ends the skip window of every backend at `ip` (the host was found
    /// alive); returns the backends that were skipped.
    pub fn clear_suspect(&self, ip: IpAddr, why: &str) -> Vec<SocketAddr> {
        self.shared.clear_suspect(ip, why)
    }
}
