//! Per-backend counters, updated lock-free on the data path and read as a
//! plain snapshot that the agent turns into metrics.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Why a connect to a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectErrorReason {
    /// The backend answered with a reset (nothing listening).
    Refused,
    /// The connect did not finish within the configured timeout.
    Timeout,
    /// No route, host or network unreachable.
    Unreachable,
    /// Anything else.
    Other,
    /// This host ran out of something (descriptors: EMFILE, ENFILE; local
    /// ports: EADDRNOTAVAIL; buffers or memory: ENOBUFS, ENOMEM). Not the
    /// backend's fault: it is not counted against the backend and does not
    /// put it in the passive-health skip window; see
    /// [`ProxyStats::local_connect_errors`].
    LocalResources,
}

impl ConnectErrorReason {
    /// Every reason, in label order.
    pub const ALL: [ConnectErrorReason; 5] = [
        Self::Refused,
        Self::Timeout,
        Self::Unreachable,
        Self::Other,
        Self::LocalResources,
    ];

    /// The reasons that count against a backend (all but `LocalResources`):
    /// the keys of [`BackendStats::connect_errors`].
    pub const BACKEND_FAULTS: [ConnectErrorReason; 4] =
        [Self::Refused, Self::Timeout, Self::Unreachable, Self::Other];

    /// Classifies an I/O error from creating, binding or connecting the
    /// backend socket.
    pub fn from_io(err: &io::Error) -> Self {
        if let Some(code) = err.raw_os_error()
            && matches!(
                code,
                libc::EMFILE | libc::ENFILE | libc::EADDRNOTAVAIL | libc::ENOBUFS | libc::ENOMEM
            )
        {
            return Self::LocalResources;
        }
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::TimedOut => Self::Timeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Self::Unreachable,
            _ => Self::Other,
        }
    }

    /// Whether the backend is to blame (everything but `LocalResources`).
    pub fn is_backend_fault(self) -> bool {
        self != Self::LocalResources
    }

    /// Short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Other => "other",
            Self::LocalResources => "local_resources",
        }
    }
}

impl std::fmt::Display for ConnectErrorReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Live counters of one backend.
#[derive(Debug, Default)]
pub(crate) struct BackendCounters {
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    refused: AtomicU64,
    timeout: AtomicU64,
    unreachable: AtomicU64,
    other: AtomicU64,
    bytes_to_backend: AtomicU64,
    bytes_from_backend: AtomicU64,
}

impl BackendCounters {
    pub(crate) fn connect_error(&self, reason: ConnectErrorReason) {
        let counter = match reason {
            ConnectErrorReason::Refused => &self.refused,
            ConnectErrorReason::Timeout => &self.timeout,
            ConnectErrorReason::Unreachable => &self.unreachable,
            ConnectErrorReason::Other => &self.other,
            // Not the backend's: counted once for the proxy (ProxyStats).
            ConnectErrorReason::LocalResources => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a connection as opened; the guard counts it closed on drop.
    pub(crate) fn open(self: &Arc<Self>) -> ActiveGuard {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_active.fetch_add(1, Relaxed);
        ActiveGuard(Arc::clone(self))
    }

    pub(crate) fn add_to_backend(&self, n: usize) {
        self.bytes_to_backend.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn add_from_backend(&self, n: usize) {
        self.bytes_from_backend.fetch_add(n as u64, Relaxed);
    }
}

/// Decrements the active-connection gauge when the connection ends.
#[derive(Debug)]
pub(crate) struct ActiveGuard(Arc<BackendCounters>);

impl ActiveGuard {
    pub(crate) fn counters(&self) -> &BackendCounters {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Relaxed);
    }
}

/// A snapshot of one backend's counters. Counters are monotonic and survive
/// the backend leaving the set (as metrics counters should).
///
/// Read connect errors through [`BackendStats::connect_errors`] (typed
/// reasons, labels from [`ConnectErrorReason::as_str`]); the four
/// `connect_errors_*` fields hold the same numbers and are kept for
/// compatibility with code that builds this struct literally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStats {
    /// The backend address.
    pub addr: SocketAddr,
    /// Whether the backend is in the current set.
    pub in_set: bool,
    /// Connections established to this backend since start.
    pub connections_total: u64,
    /// Connections currently open to this backend.
    pub connections_active: u64,
    /// Failed connects: connection refused.
    pub connect_errors_refused: u64,
    /// Failed connects: timed out.
    pub connect_errors_timeout: u64,
    /// Failed connects: host or network unreachable.
    pub connect_errors_unreachable: u64,
    /// Failed connects: any other error.
    pub connect_errors_other: u64,
    /// Bytes copied from clients to this backend.
    pub bytes_to_backend: u64,
    /// Bytes copied from this backend to clients.
    pub bytes_from_backend: u64,
}

impl BackendStats {
    /// All-zero counters for `addr`: a backend that had no connection yet.
    pub fn zero(addr: SocketAddr, in_set: bool) -> Self {
        Self {
            addr,
            in_set,
            connections_total: 0,
            connections_active: 0,
            connect_errors_refused: 0,
            connect_errors_timeout: 0,
            connect_errors_unreachable: 0,
            connect_errors_other: 0,
            bytes_to_backend: 0,
            bytes_from_backend: 0,
        }
    }

    /// Failed connects of this backend for `reason` (always 0 for
    /// `LocalResources`, which is counted per proxy).
    pub fn connect_errors_for(&self, reason: ConnectErrorReason) -> u64 {
        match reason {
            ConnectErrorReason::Refused => self.connect_errors_refused,
            ConnectErrorReason::Timeout => self.connect_errors_timeout,
            ConnectErrorReason::Unreachable => self.connect_errors_unreachable,
            ConnectErrorReason::Other => self.connect_errors_other,
            ConnectErrorReason::LocalResources => 0,
        }
    }

    /// Failed connects by reason, one entry per
    /// [`ConnectErrorReason::BACKEND_FAULTS`] (zeros included), in that order.
    pub fn connect_errors(&self) -> impl Iterator<Item = (ConnectErrorReason, u64)> + '_ {
        ConnectErrorReason::BACKEND_FAULTS
            .into_iter()
            .map(|reason| (reason, self.connect_errors_for(reason)))
    }

    /// Failed connects of all reasons.
    pub fn connect_errors_total(&self) -> u64 {
        self.connect_errors().map(|(_, count)| count).sum()
    }
}

impl Default for BackendStats {
    /// Zero counters for the unspecified address `0.0.0.0:0`, not in the set.
    fn default() -> Self {
        Self::zero(
            SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
            false,
        )
    }
}

/// Counters of the proxy as a whole: what no backend is to blame for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Client connections accepted since start (refused ones included).
    pub accepted: u64,
    /// Client connections refused at once because their source already had
    /// `max_connections_per_source` open.
    pub refused_source_limit: u64,
    /// Client connections closed because no backend could be connected.
    pub no_backend: u64,
    /// Connect attempts that failed for lack of local resources
    /// ([`ConnectErrorReason::LocalResources`]).
    pub local_connect_errors: u64,
    /// Client connections open now.
    pub connections_active: u64,
    /// Sources (an IPv4 address or an IPv6 /64) with open connections now.
    pub sources_active: usize,
}

/// Live proxy-wide counters.
#[derive(Debug, Default)]
pub(crate) struct ProxyCounters {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused_source_limit: AtomicU64,
    pub(crate) no_backend: AtomicU64,
    pub(crate) local_connect_errors: AtomicU64,
}

/// How many backends that left the set keep their counters. Counters
/// survive a backend's removal (metrics counters should), but not for every
/// address ever seen: over years of controller replacement the series would
/// grow without bound. Past this many, the longest-gone backends without
/// open connections are forgotten.
pub(crate) const MAX_RETIRED_BACKENDS: usize = 64;

/// Registry of counters keyed by backend address.
#[derive(Debug, Default)]
pub(crate) struct StatsRegistry {
    by_addr: Mutex<BTreeMap<SocketAddr, Arc<BackendCounters>>>,
}

impl StatsRegistry {
    /// The counters of `addr`, created on first use.
    pub(crate) fn counters(&self, addr: SocketAddr) -> Arc<BackendCounters> {
        let mut map = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(addr).or_default())
    }

    /// Whether `addr` has counters.
    pub(crate) fn has(&self, addr: &SocketAddr) -> bool {
        let map = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        map.contains_key(addr)
    }

    /// Forgets the counters of backends not in the set (`in_set` false),
    /// oldest-removed first (`retired_order`, oldest first), while more than
    /// [`MAX_RETIRED_BACKENDS`] remain; backends with open connections stay.
    /// Returns the forgotten addresses.
    pub(crate) fn prune(
        &self,
        retired_order: &[SocketAddr],
        in_set: impl Fn(&SocketAddr) -> bool,
    ) -> Vec<SocketAddr> {
        let mut map = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        let retired = map.keys().filter(|a| !in_set(a)).count();
        let mut excess = retired.saturating_sub(MAX_RETIRED_BACKENDS);
        let mut forgotten = Vec::new();
        for addr in retired_order {
            if excess == 0 {
                break;
            }
            let idle = map
                .get(addr)
                .is_some_and(|c| !in_set(addr) && c.connections_active.load(Relaxed) == 0);
            if idle {
                map.remove(addr);
                forgotten.push(*addr);
                excess -= 1;
            }
        }
        forgotten
    }

    /// Snapshot sorted by address; `in_set` tells whether a backend is current.
    pub(crate) fn snapshot(&self, in_set: impl Fn(&SocketAddr) -> bool) -> Vec<BackendStats> {
        let map = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(addr, c)| BackendStats {
                addr: *addr,
                in_set: in_set(addr),
                connections_total: c.connections_total.load(Relaxed),
                connections_active: c.connections_active.load(Relaxed),
                connect_errors_refused: c.refused.load(Relaxed),
                connect_errors_timeout: c.timeout.load(Relaxed),
                connect_errors_unreachable: c.unreachable.load(Relaxed),
                connect_errors_other: c.other.load(Relaxed),
                bytes_to_backend: c.bytes_to_backend.load(Relaxed),
                bytes_from_backend: c.bytes_from_backend.load(Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_tracks_active_connections() {
        let reg = StatsRegistry::default();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let c = reg.counters(addr);
        let g1 = c.open();
        let g2 = c.open();
        g1.counters().add_to_backend(10);
        g2.counters().add_from_backend(7);
        c.connect_error(ConnectErrorReason::Refused);
        drop(g1);
        let snap = reg.snapshot(|_| true);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].connections_total, 2);
        assert_eq!(snap[0].connections_active, 1);
        assert_eq!(snap[0].bytes_to_backend, 10);
        assert_eq!(snap[0].bytes_from_backend, 7);
        assert_eq!(snap[0].connect_errors_refused, 1);
        drop(g2);
        assert_eq!(reg.snapshot(|_| false)[0].connections_active, 0);
    }

    #[test]
    fn removed_backends_are_forgotten_oldest_first_past_the_bound() {
        let reg = StatsRegistry::default();
        let addr = |i: u16| SocketAddr::new([192, 0, 2, 1].into(), 1000 + i);
        let total = u16::try_from(MAX_RETIRED_BACKENDS).unwrap() + 3;
        for i in 0..total {
            reg.counters(addr(i))
                .connect_error(ConnectErrorReason::Refused);
        }
        // The oldest-removed one still has a connection open: it stays.
        let _open = reg.counters(addr(0)).open();
        let order: Vec<SocketAddr> = (0..total).map(addr).collect();
        let forgotten = reg.prune(&order, |a| *a == addr(total - 1));
        assert_eq!(forgotten, [addr(1), addr(2)]);
        assert_eq!(reg.snapshot(|_| false).len(), MAX_RETIRED_BACKENDS + 1);
        assert!(reg.prune(&order, |a| *a == addr(total - 1)).is_empty());
    }

    #[test]
    fn reasons_from_io_errors() {
        let r = |k| ConnectErrorReason::from_io(&io::Error::from(k));
        assert_eq!(
            r(io::ErrorKind::ConnectionRefused),
            ConnectErrorReason::Refused
        );
        assert_eq!(r(io::ErrorKind::TimedOut), ConnectErrorReason::Timeout);
        assert_eq!(
            r(io::ErrorKind::HostUnreachable),
            ConnectErrorReason::Unreachable
        );
        assert_eq!(
            r(io::ErrorKind::PermissionDenied),
            ConnectErrorReason::Other
        );
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::EADDRNOTAVAIL,
            libc::ENOBUFS,
            libc::ENOMEM,
        ] {
            let reason = ConnectErrorReason::from_io(&io::Error::from_raw_os_error(code));
            assert_eq!(reason, ConnectErrorReason::LocalResources, "errno {code}");
            assert!(!reason.is_backend_fault());
        }
        assert_eq!(
            ConnectErrorReason::from_io(&io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            ConnectErrorReason::Refused
        );
    }

    #[test]
    fn connect_errors_by_reason_and_zero_stats() {
        let reg = StatsRegistry::default();
        let addr: SocketAddr = "192.0.2.1:6443".parse().unwrap();
        let c = reg.counters(addr);
        c.connect_error(ConnectErrorReason::Timeout);
        c.connect_error(ConnectErrorReason::Timeout);
        c.connect_error(ConnectErrorReason::Other);
        c.connect_error(ConnectErrorReason::LocalResources);
        let snap = reg.snapshot(|_| true).remove(0);
        let labelled: Vec<(&str, u64)> = snap
            .connect_errors()
            .map(|(reason, count)| (reason.as_str(), count))
            .collect();
        assert_eq!(
            labelled,
            [
                ("refused", 0),
                ("timeout", 2),
                ("unreachable", 0),
                ("other", 1)
            ]
        );
        assert_eq!(snap.connect_errors_total(), 3);
        let zero = BackendStats::zero(addr, false);
        assert_eq!(zero.connect_errors_total(), 0);
        assert_eq!(zero.connections_total, 0);
        assert_eq!(BackendStats::default().addr.port(), 0);
    }
}
