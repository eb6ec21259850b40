//! State shared by the accept loop, the connection tasks and the handles.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ProxyConfig;
use crate::backends::{BackendSet, PassiveHealth};
use crate::clock::now;
use crate::deadline::ConnectClock;
use crate::logs::LogLimiter;
use crate::stats::{BackendCounters, BackendStats, ProxyCounters, ProxyStats, StatsRegistry};

/// At most one log line per second for each event a flood repeats.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The key a source's connections are counted under: the IPv4 address, or
/// the IPv6 /64 (one host usually owns a whole /64, RFC 4291 §2.5.1 and
/// SLAAC, so per-address counting would not limit it). IPv4-mapped
/// addresses from the dual-stack listener count as their IPv4 address.
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// Counts one accepted client connection under its source until dropped.
#[derive(Debug)]
pub(crate) struct SourceGuard {
    shared: Arc<Shared>,
    key: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut sources = lock(&self.shared.sources);
        if let Some(open) = sources.get_mut(&self.key) {
            *open -= 1;
            if *open == 0 {
                sources.remove(&self.key);
            }
        }
    }
}

/// Rate limiters of the per-connection warnings.
#[derive(Debug)]
struct Limiters {
    refused: LogLimiter,
    no_backend: LogLimiter,
    local: LogLimiter,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short critical sections leaves the
    // data consistent (single inserts/removes), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    backends: watch::Sender<Arc<BackendSet>>,
    /// Per-connection round-robin ticket; survives set updates.
    next_ticket: AtomicUsize,
    health: Mutex<PassiveHealth>,
    stats: StatsRegistry,
    /// One token per backend with open connections; cancelled when the
    /// backend has been out of the set for the grace period.
    removal_tokens: Mutex<HashMap<SocketAddr, CancellationToken>>,
    /// Generation of the latest removal of each backend, so a timer from an
    /// older removal (the backend came back and left again) does nothing.
    pending_removals: Mutex<HashMap<SocketAddr, u64>>,
    /// Backends that left the set, oldest removal first (their counters are
    /// forgotten past `MAX_RETIRED_BACKENDS`).
    retired: Mutex<Vec<SocketAddr>>,
    removal_generation: AtomicU64,
    /// Parent of every removal token: cancelled when the drain deadline ends.
    pub(crate) force_close: CancellationToken,
    pub(crate) connect_clock: ConnectClock,
    runtime: tokio::runtime::Handle,
    /// Open client connections per source key.
    sources: Mutex<HashMap<IpAddr, usize>>,
    counters: ProxyCounters,
    limiters: Limiters,
}

impl Shared {
    pub(crate) fn new(
        config: ProxyConfig,
        initial: BackendSet,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let window = config.passive_health_window;
        Self {
            connect_clock: ConnectClock::new(
                config
                    .connect_hedge
                    .map_or(config.connect_timeout, |h| h.min(config.connect_timeout)),
            ),
            config,
            backends: watch::Sender::new(Arc::new(initial)),
            next_ticket: AtomicUsize::new(0),
            health: Mutex::new(PassiveHealth::new(window)),
            stats: StatsRegistry::default(),
            removal_tokens: Mutex::new(HashMap::new()),
            pending_removals: Mutex::new(HashMap::new()),
            retired: Mutex::new(Vec::new()),
            removal_generation: AtomicU64::new(0),
            force_close: CancellationToken::new(),
            runtime,
            sources: Mutex::new(HashMap::new()),
            counters: ProxyCounters::default(),
            limiters: Limiters {
                refused: LogLimiter::new(LOG_INTERVAL),
                no_backend: LogLimiter::new(LOG_INTERVAL),
                local: LogLimiter::new(LOG_INTERVAL),
            },
        }
    }

    /// Counts an accepted connection from `peer` under its source, or
    /// refuses it (`None`, counted and logged, rate-limited) when that
    /// source already has `max_connections_per_source` open.
    pub(crate) fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<SourceGuard> {
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let key = source_key(peer.ip());
        let limit = self.config.max_connections_per_source;
        {
            let mut sources = lock(&self.sources);
            let open = sources.entry(key).or_insert(0);
            if limit == 0 || *open < limit {
                *open += 1;
                return Some(SourceGuard {
                    shared: Arc::clone(self),
                    key,
                });
            }
        }
        self.counters
            .refused_source_limit
            .fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.limiters.refused.allow(now()) {
            warn!(component = "proxy", %peer, source = %key, limit, suppressed,
                "source has too many open connections, refusing the connection");
        }
        None
    }

    /// A client closed because no backend could be connected; `local` when
    /// the last failure was this host's (out of descriptors or ports).
    pub(crate) fn no_backend(&self, peer: SocketAddr, local: bool) {
        self.counters.no_backend.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.limiters.no_backend.allow(now()) {
            if local {
                warn!(component = "proxy", %peer, suppressed,
                    "out of local resources to connect to a backend, closing client connection");
            } else {
                warn!(component = "proxy", %peer, suppressed,
                    "no backend reachable, closing client connection");
            }
        }
    }

    /// A connect to `addr` failed for lack of local resources: counted for
    /// the proxy, never against the backend.
    pub(crate) fn local_connect_error(&self, addr: SocketAddr, error: &io::Error) {
        self.counters
            .local_connect_errors
            .fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.limiters.local.allow(now()) {
            warn!(component = "proxy", backend = %addr, %error, suppressed,
                "cannot connect to a backend: this host is out of resources (not the backend's fault)");
        }
    }

    pub(crate) fn proxy_stats(&self) -> ProxyStats {
        let (connections_active, sources_active) = {
            let sources = lock(&self.sources);
            (sources.values().sum::<usize>() as u64, sources.len())
        };
        let c = &self.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            refused_source_limit: c.refused_source_limit.load(Ordering::Relaxed),
            no_backend: c.no_backend.load(Ordering::Relaxed),
            local_connect_errors: c.local_connect_errors.load(Ordering::Relaxed),
            connections_active,
            sources_active,
        }
    }

    /// Backends of the current set inside their passive-health skip window.
    pub(crate) fn skipped(&self) -> Vec<SocketAddr> {
        let set = self.current();
        let health = lock(&self.health);
        let now = now();
        set.addrs()
            .iter()
            .filter(|addr| health.is_skipped(addr, now))
            .copied()
            .collect()
    }

    pub(crate) fn current(&self) -> Arc<BackendSet> {
        Arc::clone(&self.backends.borrow())
    }

    /// Backends to try, in order, for the next connection.
    pub(crate) fn candidates(&self) -> Vec<SocketAddr> {
        let set = self.current();
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let health = lock(&self.health);
        set.candidates(ticket, now(), &health)
    }

    pub(crate) fn counters(&self, addr: SocketAddr) -> Arc<BackendCounters> {
        self.stats.counters(addr)
    }

    pub(crate) fn stats(&self) -> Vec<BackendStats> {
        let set = self.current();
        self.stats.snapshot(|a| set.contains(a))
    }

    pub(crate) fn connect_failed(&self, addr: SocketAddr, reason: &str) {
        let window = self.config.passive_health_window;
        if lock(&self.health).record_failure(addr, now()) {
            warn!(component = "proxy", backend = %addr, reason, skip_for = ?window,
                "backend failed to connect, skipping it for new connections");
        }
    }

    pub(crate) fn connect_succeeded(&self, addr: SocketAddr) {
        if lock(&self.health).record_success(&addr) {
            info!(component = "proxy", backend = %addr, "backend connected again, no longer skipped");
        }
    }

    /// Puts every backend of the current set at `ip` in the skip window for
    /// `window`, as if a connect to it had just failed; returns them.
    pub(crate) fn suspect(&self, ip: IpAddr, window: Duration, why: &str) -> Vec<SocketAddr> {
        let set = self.current();
        let now = now();
        let mut health = lock(&self.health);
        let suspects: Vec<SocketAddr> = set
            .addrs()
            .iter()
            .filter(|addr| addr.ip().to_canonical() == ip.to_canonical())
            .copied()
            .collect();
        for addr in &suspects {
            if health.skip(*addr, now, window) {
                warn!(component = "proxy", backend = %addr, reason = why, skip_for = ?window,
                    "backend suspected down, skipping it for new connections");
            }
        }
        suspects
    }

    /// Ends the skip window of every backend at `ip`; returns those that
    /// were skipped.
    pub(crate) fn clear_suspect(&self, ip: IpAddr, why: &str) -> Vec<SocketAddr> {
        let set = self.current();
        let mut health = lock(&self.health);
        let cleared: Vec<SocketAddr> = set
            .addrs()
            .iter()
            .filter(|addr| addr.ip().to_canonical() == ip.to_canonical())
            .filter(|addr| health.record_success(addr))
            .copied()
            .collect();
        for addr in &cleared {
            info!(component = "proxy", backend = %addr, reason = why, "backend no longer skipped");
        }
        cleared
    }

    /// Token that fires when connections to `addr` must be closed.
    pub(crate) fn removal_token(self: &Arc<Self>, addr: SocketAddr) -> CancellationToken {
        let token = lock(&self.removal_tokens)
            .entry(addr)
            .or_insert_with(|| self.force_close.child_token())
            .clone();
        // A connect that started before `addr` left the set can finish after
        // that removal's timer fired: give this connection its own grace.
        if let Some(grace) = self.config.removed_backend_grace
            && !self.current().contains(&addr)
            && !lock(&self.pending_removals).contains_key(&addr)
        {
            self.schedule_close(addr, grace);
        }
        token
    }

    pub(crate) fn set_backends(self: &Arc<Self>, addrs: Vec<SocketAddr>) -> bool {
        let Some(new) = BackendSet::new(addrs) else {
            warn!(
                component = "proxy",
                current = ?self.current().addrs(),
                "ignoring empty backend update, keeping the previous set"
            );
            return false;
        };
        let old = self.current();
        if *old == new {
            debug!(component = "proxy", backends = ?new.addrs(), "backend set unchanged");
            return true;
        }
        let removed = old.removed_in(&new);
        let added = new.removed_in(&old);
        {
            let mut pending = lock(&self.pending_removals);
            for addr in new.addrs() {
                pending.remove(addr);
            }
        }
        lock(&self.health).retain(&new, now());
        self.backends.send_replace(Arc::new(new.clone()));
        info!(component = "proxy", backends = ?new.addrs(), ?added, ?removed,
            "replaced backend set");
        {
            let mut retired = lock(&self.retired);
            retired.retain(|a| !new.contains(a) && !removed.contains(a));
            retired.extend(removed.iter().copied());
            let forgotten = self.stats.prune(&retired, |a| new.contains(a));
            // Only backends with counters are worth remembering.
            retired.retain(|a| self.stats.has(a));
            if !forgotten.is_empty() {
                info!(
                    component = "proxy",
                    ?forgotten,
                    "forgot the counters of long-removed backends"
                );
            }
        }
        if let Some(grace) = self.config.removed_backend_grace {
            for addr in removed {
                self.schedule_close(addr, grace);
            }
        }
        true
    }

    fn schedule_close(self: &Arc<Self>, addr: SocketAddr, grace: Duration) {
        let generation = self.removal_generation.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending_removals).insert(addr, generation);
        let shared = Arc::clone(self);
        self.runtime.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                // Shutdown closes everything anyway.
                () = shared.force_close.cancelled() => return,
            }
            {
                let mut pending = lock(&shared.pending_removals);
                if pending.get(&addr) != Some(&generation) {
                    return; // re-added, or removed again later
                }
                pending.remove(&addr);
            }
            let token = lock(&shared.removal_tokens).remove(&addr);
            let active = shared
                .stats
                .snapshot(|_| false)
                .iter()
                .find(|s| s.addr == addr)
                .map_or(0, |s| s.connections_active);
            info!(component = "proxy", backend = %addr, active, ?grace,
                "closing connections to removed backend after grace period");
            if let Some(token) = token {
                token.cancel();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_ipv4_addresses_or_ipv6_slash_64s() {
        let key = |s: &str| source_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        // The dual-stack listener reports IPv4 clients as mapped addresses.
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:3::1"), "2001:db8:1:3::");
    }
}
