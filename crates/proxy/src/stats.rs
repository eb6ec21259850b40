//! Per-backend counters, updated lock-free on the data path and read as a
//! plain snapshot that the agent turns into metrics.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Why a connect to a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectErrorReason {
    /// The backend answered with a reset (nothing listening).
    Refused,
    /// The connect did not finish within the configured timeout.
    Timeout,
    /// No route, host or network unreachable.
    Unreachable,
    /// Anything else.
    Other,
}

impl ConnectErrorReason {
    /// Classifies an I/O error from `connect`.
    pub fn from_io(err: &io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::TimedOut => Self::Timeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Self::Unreachable,
            _ => Self::Other,
        }
    }

    /// Short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Other => "other",
        }
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
    }
}
