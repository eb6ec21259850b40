//! State shared by the accept loop, the connection tasks and the handles.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ProxyConfig;
use crate::backends::{BackendSet, PassiveHealth};
use crate::deadline::ConnectClock;
use crate::stats::{BackendCounters, BackendStats, StatsRegistry};

/// Reads the clock through tokio so paused-time tests drive it.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
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
    removal_generation: AtomicU64,
    /// Parent of every removal token: cancelled when the drain deadline ends.
    pub(crate) force_close: CancellationToken,
    pub(crate) connect_clock: ConnectClock,
    runtime: tokio::runtime::Handle,
}

impl Shared {
    pub(crate) fn new(
        config: ProxyConfig,
        initial: BackendSet,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let window = config.passive_health_window;
        Self {
            connect_clock: ConnectClock::new(config.connect_timeout),
            config,
            backends: watch::Sender::new(Arc::new(initial)),
            next_ticket: AtomicUsize::new(0),
            health: Mutex::new(PassiveHealth::new(window)),
            stats: StatsRegistry::default(),
            removal_tokens: Mutex::new(HashMap::new()),
            pending_removals: Mutex::new(HashMap::new()),
            removal_generation: AtomicU64::new(0),
            force_close: CancellationToken::new(),
            runtime,
        }
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
        if let Some(grace) = self.config.removed_backend_grace {
            for addr in removed {
                self.schedule_close(addr, grace);
            }
        }
        true
    }

    fn schedule_close(self: &Arc<Self>, addr: SocketAddr, grace: std::time::Duration) {
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
