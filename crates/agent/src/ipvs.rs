//! IPVS mode (k0s's `virtualServers`): the kernel balances VIP:apiPort
//! itself; no proxy, no REDIRECT rule.
//!
//! On every controller, before VRRP starts (the order of
//! `docs/ipvs-foundation.md`): `arp_announce=2` on the VRRP interfaces, the
//! ARP guard for every VIP (none is held yet), `dummyvip0` with every VIP
//! (so DR-forwarded packets, `dst=VIP`, are accepted locally), leftover
//! services of a crashed run removed, the sync daemon as backup, then the
//! reconciler.
//!
//! Then a controller task follows VRRP and the reconciler:
//!
//! - A VIP gained: guard lifted for it, its service added with the
//!   reconciler's apiservers as real servers, sync daemon master.
//! - A VIP lost: guard on at once, sync daemon backup, its service kept
//!   for the handoff grace (clients whose ARP cache still names this node
//!   keep their connections; removing the service first resets them, see
//!   the foundation's notes) and removed after it.
//! - A new apiserver set: real servers added; one that left gets weight 0
//!   (existing connections finish) and is removed at the next reconcile,
//!   which comes within `resync` (half the shortest `delayLoop`).
//! - Every `resync` anyway: the kernel is read and repaired.
//!
//! Stop: guard on for every VIP, grace (in `run`), services removed, sync
//! daemons stopped, `dummyvip0` deleted, guard table removed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cplb_ipvs::{
    ArpGuard, DUMMY_LINK, DummyVips, Ipvs, ServiceStatus, SyncDaemon, SyncState,
    announce_primary_address,
};
use cplb_reconciler::{Backends, HealthSnapshot, Reconciler, ReconcilerStatus};
use cplb_vrrp::fsm::State;
use cplb_vrrp::io::driver::DriverStatus;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::RunError;
use crate::plan::{IpvsPlan, forward_name};
use crate::run::ReleaseScope;
use crate::status::{IpvsReport, IpvsServiceReport, RealServerReport};

/// How often the kernel's counters are read for the report.
const REFRESH: Duration = Duration::from_secs(1);

/// IPVS mode, running.
pub(crate) struct IpvsBalancer {
    /// Prepared, until [`IpvsBalancer::follow`] starts it.
    pending: Option<(Controller, watch::Receiver<Backends>)>,
    controller: Option<JoinHandle<Controller>>,
    stopped: Option<Controller>,
    cancel: CancellationToken,
    reconciler_task: JoinHandle<()>,
    reconciler_cancel: CancellationToken,
    pub(crate) health: watch::Receiver<HealthSnapshot>,
    pub(crate) reconciler_status: watch::Receiver<ReconcilerStatus>,
    pub(crate) updates: Arc<AtomicU64>,
    pub(crate) report: watch::Receiver<IpvsReport>,
}

/// The VIPs of the instances in Master state.
fn held_vips(status: &DriverStatus) -> BTreeSet<IpAddr> {
    status
        .instances
        .iter()
        .filter(|i| i.state == State::Master)
        .flat_map(|i| i.vips.iter().map(|v| v.addr))
        .collect()
}

fn ipv4(vips: impl IntoIterator<Item = IpAddr>) -> Vec<Ipv4Addr> {
    vips.into_iter()
        .filter_map(|v| match v {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// What could not be undone, as text.
fn note(leftovers: &mut Vec<String>, what: &str, result: Result<(), cplb_ipvs::Error>) {
    if let Err(e) = result {
        warn!(component = "ipvs", error = %e, "{what} failed");
        leftovers.push(format!("{what}: {e}"));
    }
}

impl IpvsBalancer {
    /// Prepares the node (see the module doc) and starts the reconciler;
    /// [`IpvsBalancer::follow`] starts the rest once VRRP runs.
    pub(crate) async fn start(plan: &IpvsPlan) -> Result<IpvsBalancer, RunError> {
        let ipvs = Ipvs::connect().await?;
        let guard = ArpGuard::new();
        let dummy = DummyVips::new(DUMMY_LINK)?;
        let mut controller = Controller {
            ipvs,
            guard,
            dummy,
            plan: plan.clone(),
            held: BTreeSet::new(),
            releasing: BTreeMap::new(),
            sync_role: None,
            backends: Backends::new(),
            report: watch::Sender::new(IpvsReport::default()),
            counters: IpvsReport {
                dummy_link: DUMMY_LINK.to_owned(),
                ..IpvsReport::default()
            },
        };
        if let Err(e) = controller.prepare().await {
            // Leave nothing half-made behind.
            let _ = controller.teardown(ReleaseScope::Everything).await;
            return Err(e);
        }
        let report = controller.report.subscribe();

        let reconciler = Reconciler::new_retrying(plan.reconciler.clone())?;
        let reconciler_status = reconciler.subscribe_status();
        let health = reconciler.subscribe_health();
        let backends = reconciler.subscribe();
        let reconciler_cancel = CancellationToken::new();
        let reconciler_task = {
            let cancel = reconciler_cancel.clone();
            tokio::spawn(async move { reconciler.run(cancel).await })
        };
        Ok(IpvsBalancer {
            pending: Some((controller, backends)),
            controller: None,
            stopped: None,
            cancel: CancellationToken::new(),
            reconciler_task,
            reconciler_cancel,
            health,
            reconciler_status,
            updates: Arc::new(AtomicU64::new(0)),
            report,
        })
    }

    /// Once the VRRP driver runs (its start-up check refuses a VIP that is
    /// a permanent address of the node, which `dummyvip0`'s are): the VIPs
    /// on `dummyvip0`, then the controller following `vrrp`.
    pub(crate) async fn follow(
        &mut self,
        vrrp: watch::Receiver<DriverStatus>,
    ) -> Result<(), RunError> {
        let Some((controller, backends)) = self.pending.take() else {
            return Ok(());
        };
        if let Err(e) = controller.dummy.ensure(&controller.plan.vips).await {
            self.stopped = Some(controller);
            return Err(e.into());
        }
        info!(component = "ipvs", link = DUMMY_LINK, vips = ?controller.plan.vips, "VIPs on the dummy link");
        self.controller = Some(tokio::spawn(controller.follow(
            vrrp,
            backends,
            self.health.clone(),
            Arc::clone(&self.updates),
            self.cancel.clone(),
        )));
        Ok(())
    }

    /// Whether this node can serve the VIP: the controller runs and at
    /// least one apiserver is healthy from here.
    pub(crate) fn health(&self) -> (bool, String) {
        let alive = self.controller.as_ref().is_some_and(|t| !t.is_finished());
        if !alive && self.stopped.is_none() && self.pending.is_none() {
            return (false, "IPVS controller not running".to_owned());
        }
        crate::health::node_verdict(true, &self.health.borrow())
    }

    /// Stops the reconciler (first, as in proxy mode).
    pub(crate) async fn stop_reconciler(&mut self) {
        self.reconciler_cancel.cancel();
        if let Err(e) = (&mut self.reconciler_task).await {
            warn!(component = "reconciler", error = %e, "reconciler task failed");
        }
    }

    /// After VRRP released the VIPs: stops following, the guard on for
    /// every VIP, sync daemon backup. The services stay (handoff grace).
    pub(crate) async fn vips_released(&mut self) {
        self.cancel.cancel();
        if let Some((c, _)) = self.pending.take() {
            self.stopped = Some(c);
        }
        if let Some(task) = self.controller.take() {
            match task.await {
                Ok(c) => self.stopped = Some(c),
                Err(e) => warn!(component = "ipvs", error = %e, "IPVS controller task failed"),
            }
        }
        if let Some(c) = self.stopped.as_mut() {
            c.set_held(BTreeSet::new()).await;
        }
    }

    /// Removes the services, the sync daemons, `dummyvip0` and the guard;
    /// returns what could not be removed.
    pub(crate) async fn stop(mut self) -> Vec<String> {
        self.vips_released().await;
        match self.stopped.take() {
            Some(c) => c.teardown(ReleaseScope::Everything).await,
            None => vec!["IPVS controller lost: services, dummyvip0 and ARP guard not removed (run cplb release)".to_owned()],
        }
    }
}

/// The controller: owns the kernel objects of IPVS mode.
struct Controller {
    ipvs: Ipvs,
    guard: ArpGuard,
    dummy: DummyVips,
    plan: IpvsPlan,
    /// VIPs held (their instance is Master).
    held: BTreeSet<IpAddr>,
    /// VIPs lost, whose services stay until then.
    releasing: BTreeMap<IpAddr, Instant>,
    sync_role: Option<SyncState>,
    backends: Backends,
    report: watch::Sender<IpvsReport>,
    counters: IpvsReport,
}

impl Controller {
    /// Start-up, before VRRP: nothing is held yet.
    async fn prepare(&mut self) -> Result<(), RunError> {
        for interface in &self.plan.interfaces {
            announce_primary_address(interface)?;
        }
        // The guard before the dummy link: no moment where a new dummyvip0
        // address is answered (k0s#4700).
        self.guard.apply(&ipv4(self.plan.vips.iter().copied()))?;
        // A crashed run's (or k0s's) dummyvip0 goes until VRRP has started
        // (see `follow`).
        self.dummy.delete().await?;
        // A crashed run's services: not ours to keep while not holding.
        self.ipvs.reconcile(&[], &self.plan.owned()).await?;
        self.switch_sync(SyncState::Backup).await;
        Ok(())
    }

    async fn follow(
        mut self,
        mut vrrp: watch::Receiver<DriverStatus>,
        mut backends: watch::Receiver<Backends>,
        health: watch::Receiver<HealthSnapshot>,
        updates: Arc<AtomicU64>,
        cancel: CancellationToken,
    ) -> Controller {
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_resync = Instant::now() + self.plan.resync;
        let mut vrrp_open = true;
        let mut backends_open = true;
        loop {
            let mut dirty = false;
            tokio::select! {
                () = cancel.cancelled() => return self,
                changed = vrrp.changed(), if vrrp_open => {
                    if changed.is_err() {
                        vrrp_open = false;
                        continue;
                    }
                    let held = held_vips(&vrrp.borrow_and_update());
                    if held != self.held {
                        // Reconciles itself when a VIP was gained; a lost
                        // one's service waits for the grace.
                        self.set_held(held).await;
                    }
                }
                changed = backends.changed(), if backends_open => {
                    if changed.is_err() {
                        backends_open = false;
                        continue;
                    }
                    let set = backends.borrow_and_update().clone();
                    if set != self.backends {
                        info!(component = "ipvs", real_servers = ?set, "apiserver set updated");
                        updates.fetch_add(1, Ordering::Relaxed);
                        self.backends = set;
                        dirty = true;
                    }
                }
                _ = refresh.tick() => {
                    let now = Instant::now();
                    let before = self.releasing.len();
                    self.releasing.retain(|_, until| *until > now);
                    dirty = self.releasing.len() != before || now >= next_resync;
                }
            }
            if dirty {
                self.reconcile().await;
                next_resync = Instant::now() + self.plan.resync;
            }
            self.publish(&health).await;
        }
    }

    /// A new held set: guard, sync role; the services follow at the next
    /// reconcile (a lost VIP's only after the grace).
    async fn set_held(&mut self, held: BTreeSet<IpAddr>) {
        let now = Instant::now();
        for lost in self.held.difference(&held) {
            info!(component = "ipvs", vip = %lost, grace = ?self.plan.handoff_grace, "VIP lost: ARP guard on, its IPVS service removed after the grace");
            self.releasing.insert(*lost, now + self.plan.handoff_grace);
        }
        for gained in held.difference(&self.held) {
            info!(component = "ipvs", vip = %gained, "VIP gained: ARP guard lifted, IPVS service added");
            self.releasing.remove(gained);
        }
        self.held = held;
        let unheld = ipv4(
            self.plan
                .vips
                .iter()
                .copied()
                .filter(|v| !self.held.contains(v)),
        );
        if let Err(e) = self.guard.apply(&unheld) {
            warn!(component = "ipvs-arp", error = %e, "cannot update the ARP guard");
            self.counters.reconcile_errors += 1;
            self.counters.last_error = Some(e.to_string());
        }
        let role = if self.held.is_empty() {
            SyncState::Backup
        } else {
            SyncState::Master
        };
        if !self.held.is_empty() {
            // Services before the sync role: the new holder forwards at once.
            self.reconcile().await;
        }
        self.switch_sync(role).await;
    }

    /// One sync daemon role at a time: the old one stopped first.
    async fn switch_sync(&mut self, role: SyncState) {
        if self.sync_role == Some(role) || self.plan.sync_interface.is_empty() {
            return;
        }
        if let Some(old) = self.sync_role.take()
            && let Err(e) = self.ipvs.stop_sync_daemon(old).await
        {
            warn!(component = "ipvs", error = %e, "cannot stop the sync daemon");
        }
        // A crashed run's daemon of the new role may still run.
        let _ = self.ipvs.stop_sync_daemon(role).await;
        let daemon = SyncDaemon {
            state: role,
            interface: self.plan.sync_interface.clone(),
            sync_id: self.plan.sync_id,
        };
        match self.ipvs.start_sync_daemon(&daemon).await {
            Ok(()) => {
                info!(component = "ipvs", ?role, interface = %daemon.interface, sync_id = daemon.sync_id, "connection sync daemon started");
                self.sync_role = Some(role);
            }
            Err(e) => {
                warn!(component = "ipvs", error = %e, ?role, "cannot start the connection sync daemon");
                self.counters.reconcile_errors += 1;
                self.counters.last_error = Some(e.to_string());
            }
        }
    }

    /// Reads the kernel and applies the difference; errors are counted and
    /// retried at the next event or resync.
    async fn reconcile(&mut self) {
        let mut keep = self.held.clone();
        keep.extend(self.releasing.keys().copied());
        let desired = self.plan.desired(&keep, &self.backends);
        self.counters.reconciles += 1;
        match self.ipvs.reconcile(&desired, &self.plan.owned()).await {
            Ok(changes) => {
                self.counters.changes += changes.len() as u64;
                self.counters.last_error = None;
            }
            Err(e) => {
                warn!(component = "ipvs", error = %e, "IPVS reconcile failed; retried");
                self.counters.reconcile_errors += 1;
                self.counters.last_error = Some(e.to_string());
            }
        }
    }

    /// Reads the kernel's services for `/status` and `/metrics`.
    async fn publish(&mut self, health: &watch::Receiver<HealthSnapshot>) {
        let services = match self.ipvs.services().await {
            Ok(s) => s,
            Err(e) => {
                warn!(component = "ipvs", error = %e, "cannot read the IPVS services");
                return;
            }
        };
        let owned = self.plan.owned();
        let snapshot = health.borrow().clone();
        let report = IpvsReport {
            held_vips: self.held.iter().copied().collect(),
            releasing_vips: self.releasing.keys().copied().collect(),
            sync_daemon: match self.sync_role {
                Some(SyncState::Master) => "master",
                Some(SyncState::Backup) => "backup",
                None => "none",
            }
            .to_owned(),
            services: services
                .iter()
                .filter(|s| owned.contains(&s.service.key))
                .map(|s| service_report(s, &snapshot))
                .collect(),
            ..self.counters.clone()
        };
        self.report.send_if_modified(|r| {
            let changed = *r != report;
            *r = report;
            changed
        });
    }

    /// Stop: services removed, sync daemons stopped, `dummyvip0` deleted,
    /// guard table removed. Returns what could not be.
    async fn teardown(self, scope: ReleaseScope) -> Vec<String> {
        let mut leftovers = Vec::new();
        note(
            &mut leftovers,
            "removing the IPVS services",
            self.ipvs
                .reconcile(&[], &self.plan.owned())
                .await
                .map(|_| ()),
        );
        for role in [SyncState::Master, SyncState::Backup] {
            // ESRCH when that role does not run: nothing to undo.
            let _ = self.ipvs.stop_sync_daemon(role).await;
        }
        if scope == ReleaseScope::ForRestart {
            // Every controller has dummyvip0, holder or not: the new holder
            // forwards (DR) connections persisted to this node's apiserver
            // to the VIP here. Kept for the worker restarting at once; the
            // guard now drops ARP for every VIP, none being held.
            note(
                &mut leftovers,
                "guarding ARP for every VIP",
                self.guard.apply(&ipv4(self.plan.vips.iter().copied())),
            );
            return leftovers;
        }
        note(
            &mut leftovers,
            "deleting dummyvip0",
            self.dummy.delete().await.map(|_| ()),
        );
        note(
            &mut leftovers,
            "removing the ARP guard",
            self.guard.remove().map(|_| ()),
        );
        if leftovers.is_empty() {
            info!(
                component = "ipvs",
                "IPVS services, sync daemons, dummyvip0 and ARP guard removed"
            );
        }
        leftovers
    }
}

fn service_report(s: &ServiceStatus, health: &HealthSnapshot) -> IpvsServiceReport {
    IpvsServiceReport {
        address: SocketAddr::new(s.service.key.addr, s.service.key.port).to_string(),
        scheduler: s.service.scheduler.clone(),
        persistence_seconds: s.service.persistence,
        real_servers: s
            .destinations
            .iter()
            .map(|d| RealServerReport {
                address: SocketAddr::new(d.dest.addr, d.dest.port),
                weight: d.dest.weight,
                forward: forward_name(d.dest.forward).to_owned(),
                active_connections: d.active_conns,
                inactive_connections: d.inactive_conns,
                health: health
                    .get(&d.dest.addr)
                    .map_or_else(|| "unknown".to_owned(), |b| b.health.to_string()),
            })
            .collect(),
    }
}

/// `cplb release` in IPVS mode: after a crash, the services, sync daemons,
/// `dummyvip0` and the guard go (a restarted agent makes them again).
pub(crate) async fn release(plan: &IpvsPlan, scope: ReleaseScope) -> Result<(), RunError> {
    let ipvs = Ipvs::connect().await?;
    let controller = Controller {
        ipvs,
        guard: ArpGuard::new(),
        dummy: DummyVips::new(DUMMY_LINK)?,
        plan: plan.clone(),
        held: BTreeSet::new(),
        releasing: BTreeMap::new(),
        sync_role: None,
        backends: Backends::new(),
        report: watch::Sender::new(IpvsReport::default()),
        counters: IpvsReport::default(),
    };
    let leftovers = controller.teardown(scope).await;
    if leftovers.is_empty() {
        Ok(())
    } else {
        Err(RunError::Teardown(leftovers.join("; ")))
    }
}
