//! `cplb run`: start, loop, stop.
//!
//! Start (each step needs the previous one in place): the admin endpoint,
//! then the load balancer (proxy → reconciler → netfilter rules), then
//! VRRP. IPv6 address labels come with the VIPs from the VRRP driver.
//! READY=1 goes to systemd once the proxy listens, the rules exist and the
//! VRRP sockets are open.
//!
//! Loop, every [`TICK`]: health → VRRP priority, rule repair (on the
//! blocking pool, never awaited here), watchdog (only while the VRRP driver
//! makes progress, see [`crate::watchdog`]), status report; until
//! SIGTERM/SIGINT, or until the VRRP driver, the proxy or the reconciler
//! stops by itself: then the agent stops as on SIGTERM (VIPs handed over,
//! rules removed) and exits non-zero, for systemd or the supervisor to
//! start it again.
//!
//! Stop: reconciler → VRRP release (one priority-0 advert per Master
//! instance, VIPs removed, so this node still reaches the VIP once another
//! node holds it) → handoff grace → proxy drain → rules removed.
//!
//! [`release`] is the crash handoff for a worker that died without that
//! stop: systemd's `ExecStopPost=` or the supervising parent runs it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cplb_vrrp::io::driver::{self, Control, Driver, DriverStatus};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin;
pub use crate::error::RunError;
use crate::health::HealthTracker;
use crate::ipvs::IpvsBalancer;
use crate::lb::LoadBalancer;
use crate::netfilter::Rules;
use crate::plan::Plan;
use crate::report;
use crate::status::StatusReport;
use crate::watchdog::Watchdog;

/// How often the main loop refreshes the status report and looks at health.
const TICK: Duration = Duration::from_millis(500);
/// How often the REDIRECT rules are checked (and put back if gone), in ticks.
const RULE_CHECK_EVERY: u32 = 20;

/// What `run` needs besides the plan.
pub struct RunOptions {
    /// Published whenever the report changes (the admin endpoint reads it).
    pub report: watch::Sender<StatusReport>,
}

/// `cplb run`: serves the admin endpoint on the plan's address and runs
/// the agent until SIGTERM or SIGINT.
pub async fn run_with_admin(plan: Plan) -> Result<(), RunError> {
    let address = plan.admin_address;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| in_use(RunError::Admin { address, source }))?;
    let (report, report_rx) = watch::channel(StatusReport::default());
    let cancel = CancellationToken::new();
    let server = tokio::spawn(admin::serve(listener, Arc::new(report_rx), cancel.clone()));
    info!(component = "agent", %address, "admin endpoint: /metrics /healthz /readyz /status");
    let result = run(plan, RunOptions { report }).await;
    cancel.cancel();
    let _ = server.await;
    result
}

/// Runs the agent until SIGTERM or SIGINT, then stops in order. `Ok` means
/// a clean stop (every rule and VIP removed).
pub async fn run(plan: Plan, options: RunOptions) -> Result<(), RunError> {
    let started = Instant::now();
    let mut signals = Signals::new()?;
    if let Some(lb) = &plan.load_balancer
        && crate::manifest::is_admin_kubeconfig(&lb.reconciler.kubeconfig)
    {
        warn!(component = "agent", kubeconfig = %lb.reconciler.kubeconfig.display(),
            "the kubeconfig is a cluster-admin one; cplb needs only list/watch on the kubernetes endpoints and GET /readyz (cplb manifest --rbac, docs/configuration.md)");
    }
    let mut agent = Agent::start(&plan).await?;
    info!(
        component = "agent",
        instances = plan.instances.len(),
        priority = plan.initial_priority,
        "started"
    );
    notify(&[sd_notify::NotifyState::Ready]);
    let failure = agent
        .run_until_stopped(&plan, &mut signals, &options, started)
        .await;
    notify(&[sd_notify::NotifyState::Stopping]);
    options.report.send_modify(|r| {
        r.stopping = true;
        r.ready = false;
    });
    let leftovers = agent.stop(&plan, &mut signals).await;
    if let Some(failure) = failure {
        return Err(failure);
    }
    if !leftovers.is_empty() {
        return Err(RunError::Teardown(leftovers.join("; ")));
    }
    info!(component = "agent", "stopped cleanly");
    Ok(())
}

/// What a release takes away besides the VIPs and the IPVS services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseScope {
    /// Everything of the agent (`cplb release`, a supervisor that pauses
    /// before the next worker or stops).
    Everything,
    /// Not what every controller has whether it holds a VIP or not: the
    /// REDIRECT rules (proxy mode) and dummyvip0 (IPVS mode, its ARP guard
    /// then covering every VIP). For a supervisor that restarts its worker
    /// at once: clients still sent here (a stale ARP entry, the OUTPUT rule,
    /// connections the new holder forwards to this node's apiserver) keep
    /// being served, or wait in the held backlog, instead of failing; the
    /// worker checks all of it when it starts.
    ForRestart,
}

/// Crash handoff (`cplb release`): priority-0 adverts for every instance
/// whose VIPs are still on this node, VIPs removed, then the REDIRECT rules
/// removed unless `scope` keeps them. Safe to run after a clean stop: it
/// then finds nothing to do.
pub async fn release(plan: &Plan, scope: ReleaseScope) -> Result<Vec<u8>, RunError> {
    let instances = plan.instances.iter().map(|i| i.vrrp.clone()).collect();
    let released = driver::release(instances).await?;
    if let Some(ipvs) = &plan.ipvs {
        crate::ipvs::release(ipvs, scope).await?;
    }
    if let Some(lb) = &plan.load_balancer
        && scope == ReleaseScope::Everything
    {
        let rules = Rules::detect(lb.netfilter, lb.output_rule).await?;
        let errors = rules.uninstall(&lb.redirects).await;
        if !errors.is_empty() {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(RunError::Teardown(text.join("; ")));
        }
    }
    Ok(released)
}

/// `cplb release` (and the supervisor after its worker died): [`release`]
/// only if no other process holds the agent lock at `lock_file`. A second
/// instance that failed to start must not take the running agent's VIPs
/// and rules away; `None` then.
pub async fn release_unless_running(
    plan: &Plan,
    lock_file: &std::path::Path,
    scope: ReleaseScope,
) -> Result<Option<Vec<u8>>, RunError> {
    let _lock = match crate::lock::AgentLock::try_acquire(lock_file) {
        Ok(lock) => lock,
        Err(e @ crate::lock::LockError::Held { .. }) => {
            info!(component = "agent", reason = %e, "release skipped: an agent is running");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    release(plan, scope).await.map(Some)
}

/// SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> Result<Signals, RunError> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(RunError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(RunError::Signals)?,
        })
    }

    /// Waits for either; returns its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// The running parts.
struct Agent {
    lb: Option<LoadBalancer>,
    ipvs: Option<IpvsBalancer>,
    vrrp: JoinHandle<Result<(), driver::DriverError>>,
    vrrp_cancel: CancellationToken,
    status: watch::Receiver<DriverStatus>,
    control: mpsc::Sender<Control>,
    tracker: Option<HealthTracker>,
}

impl Agent {
    /// The load balancer, then VRRP; returns once the VRRP driver has
    /// opened its sockets.
    async fn start(plan: &Plan) -> Result<Agent, RunError> {
        let tracker = plan
            .health
            .map(HealthTracker::new)
            .transpose()
            .map_err(|e| {
                RunError::Config(vec![crate::config::Problem::error(
                    "cplb.health",
                    None,
                    e.to_string(),
                )])
            })?;
        let (status_tx, mut status) = watch::channel(DriverStatus::default());
        let mut ipvs = match &plan.ipvs {
            None => None,
            Some(ipvs) => Some(IpvsBalancer::start(ipvs).await?),
        };
        let mut lb = match &plan.load_balancer {
            None if ipvs.is_some() => None,
            None => {
                info!(
                    component = "agent",
                    "disableLoadBalancer: VRRP only, no proxy, reconciler or rules"
                );
                None
            }
            Some(lb) => Some(LoadBalancer::start(lb).await.map_err(in_use)?),
        };
        let (control, control_rx) = mpsc::channel(8);
        let vrrp_cancel = CancellationToken::new();
        let instances = plan.instances.iter().map(|i| i.vrrp.clone()).collect();
        let mut vrrp = tokio::spawn(
            Driver::builder(instances)
                .status(status_tx)
                .control(control_rx)
                .run(vrrp_cancel.clone()),
        );
        // The driver publishes once it has opened its sockets and started.
        let started = tokio::select! {
            changed = status.changed() => changed.is_ok(),
            result = &mut vrrp => {
                let error = match result {
                    Ok(Err(e)) => RunError::Vrrp(e),
                    _ => RunError::Crashed("VRRP driver"),
                };
                if let Some(mut lb) = lb.take() {
                    lb.stop_reconciler().await;
                    lb.stop().await;
                }
                if let Some(mut ipvs) = ipvs.take() {
                    ipvs.stop_reconciler().await;
                    ipvs.stop().await;
                }
                return Err(error);
            }
        };
        if !started {
            return Err(RunError::Crashed("VRRP driver"));
        }
        if let Some(lb) = &lb {
            lb.follow_takeovers(status.clone());
        }
        if let Some(balancer) = ipvs.as_mut()
            && let Err(e) = balancer.follow(status.clone()).await
        {
            vrrp_cancel.cancel();
            let _ = (&mut vrrp).await;
            if let Some(mut balancer) = ipvs.take() {
                balancer.stop_reconciler().await;
                balancer.stop().await;
            }
            return Err(e);
        }
        Ok(Agent {
            lb,
            ipvs,
            vrrp,
            vrrp_cancel,
            status,
            control,
            tracker,
        })
    }

    /// The tick loop; returns the failure that ended it, if any.
    async fn run_until_stopped(
        &mut self,
        plan: &Plan,
        signals: &mut Signals,
        options: &RunOptions,
        started: Instant,
    ) -> Option<RunError> {
        let mut watchdog = sd_notify::watchdog_enabled()
            .map(|d| Watchdog::new(d / 2, Instant::now(), self.status.borrow().progress));
        let mut ticks: u32 = 0;
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                name = signals.recv() => {
                    info!(component = "agent", signal = name, "stopping");
                    return None;
                }
                result = &mut self.vrrp => {
                    error!(component = "agent", ?result, "VRRP driver ended unexpectedly");
                    return Some(RunError::Crashed("VRRP driver"));
                }
                _ = ticker.tick() => {}
            }
            ticks = ticks.wrapping_add(1);
            #[cfg(debug_assertions)]
            self.inject_test_fault();
            if let Some(dead) = self.lb.as_ref().and_then(LoadBalancer::dead_component) {
                // Rules would redirect into a closed port, or the backends
                // would go stale: hand the VIPs over and exit non-zero.
                error!(
                    component = "agent",
                    component_stopped = dead,
                    "{dead} stopped unexpectedly; stopping the agent so it is restarted"
                );
                return Some(RunError::Crashed(dead));
            }
            self.follow_health().await;
            if let Some(lb) = self.lb.as_mut() {
                lb.check_rules(ticks.is_multiple_of(RULE_CHECK_EVERY));
            }
            let progress = self.status.borrow().progress;
            if let Some(dog) = watchdog.as_mut()
                && dog.due(Instant::now(), progress)
            {
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
            let mut report = report::build(
                started,
                plan,
                &self.status.borrow(),
                self.tracker.as_ref(),
                self.lb.as_ref(),
            );
            if let Some(ipvs) = &self.ipvs {
                report::add_ipvs(&mut report, ipvs);
            }
            options.report.send_replace(report);
        }
    }

    /// Debug builds only: `CPLB_TEST_FAULT_FILE` names a file the tests
    /// write `proxy` or `reconciler` to; that part is then stopped as if it
    /// had died (issue 14, finding 8).
    #[cfg(debug_assertions)]
    fn inject_test_fault(&mut self) {
        let Some(path) = std::env::var_os("CPLB_TEST_FAULT_FILE") else {
            return;
        };
        let Ok(what) = std::fs::read_to_string(&path) else {
            return;
        };
        let _ = std::fs::remove_file(&path);
        if let Some(lb) = self.lb.as_mut() {
            warn!(
                component = "agent",
                fault = what.trim(),
                "injecting a test fault"
            );
            lb.inject_test_fault(what.trim());
        }
    }

    /// Health → priority: a committed change goes to every instance.
    async fn follow_health(&mut self) {
        let Some(tracker) = self.tracker.as_mut() else {
            return;
        };
        let (healthy, reason) = match (&self.lb, &self.ipvs) {
            (Some(lb), _) => lb.health(),
            (None, Some(ipvs)) => ipvs.health(),
            (None, None) => return,
        };
        let Some(change) = tracker.step(Instant::now(), healthy, &reason) else {
            return;
        };
        let set = Control::SetPriority {
            vrid: None,
            priority: change.priority,
        };
        if self.control.send(set).await.is_err() {
            warn!(
                component = "agent",
                "VRRP driver gone; priority not changed"
            );
        }
    }

    /// Stops in order; returns what could not be removed.
    async fn stop(mut self, plan: &Plan, signals: &mut Signals) -> Vec<String> {
        if let Some(lb) = self.lb.as_mut() {
            lb.stop_reconciler().await;
        }
        if let Some(ipvs) = self.ipvs.as_mut() {
            ipvs.stop_reconciler().await;
        }
        let was_master = self
            .status
            .borrow()
            .instances
            .iter()
            .any(|s| s.state == cplb_vrrp::fsm::State::Master);
        self.vrrp_cancel.cancel();
        if !self.vrrp.is_finished() {
            match self.vrrp.await {
                Ok(Ok(())) => info!(component = "vrrp", "VRRP stopped: VIPs released"),
                Ok(Err(e)) => warn!(component = "vrrp", error = %e, "VRRP driver error"),
                Err(e) => warn!(component = "vrrp", error = %e, "VRRP task failed"),
            }
        }
        if let Some(ipvs) = self.ipvs.as_mut() {
            // ARP guard on for every VIP; the services stay for the grace.
            ipvs.vips_released().await;
        }
        if self.lb.is_none() && self.ipvs.is_none() {
            return Vec::new();
        }
        if was_master {
            // Clients keep sending to this node until the new Master's
            // gratuitous ARP/NA reaches them (Skew_Time after our priority-0
            // advert, RFC 3768 §6.4.2). The REDIRECT rule still catches
            // VIP:apiPort here without the VIP on the interface, so keep the
            // proxy accepting until then, as k0s's proxy (which outlives
            // keepalived) does.
            let grace = plan.handoff_grace;
            info!(
                component = "agent",
                ?grace,
                "VIP released; the proxy or IPVS services keep serving while another controller takes over"
            );
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                _ = signals.recv() => {}
            }
        }
        let mut leftovers = Vec::new();
        if let Some(lb) = self.lb {
            leftovers.extend(lb.stop().await);
        }
        if let Some(ipvs) = self.ipvs {
            leftovers.extend(ipvs.stop().await);
        }
        leftovers
    }
}

/// A listen that failed because another process has the port becomes
/// [`RunError::PortInUse`] naming it (exit 78: k0s's own CPLB or another
/// agent runs here; restarting cannot help, and each restart's
/// `ExecStopPost=cplb release` would be skipped anyway thanks to the lock).
fn in_use(error: RunError) -> RunError {
    let address = match &error {
        RunError::Admin { address, source }
        | RunError::Proxy(cplb_proxy::ProxyError::Bind {
            addr: address,
            source,
        }) if source.kind() == std::io::ErrorKind::AddrInUse => *address,
        _ => return error,
    };
    let owner =
        crate::lock::port_owner(address.port()).unwrap_or_else(|| "another process".to_owned());
    RunError::PortInUse { address, owner }
}

/// Sends a message to systemd if we run under it (`NOTIFY_SOCKET`).
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        warn!(component = "agent", error = %e, "sd_notify failed");
    }
}
