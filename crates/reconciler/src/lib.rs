//! The apiserver endpoint reconciler: learns which apiservers exist (from the
//! `kubernetes` EndpointSlices or Endpoints in `default`), health-checks each
//! one and publishes the healthy set for the proxy.
//!
//! Layout (sans-IO core, thin drivers):
//! - [`endpoints`]: pure `EndpointSlice`/`Endpoints` → addresses.
//! - [`health`]: pure per-backend state driven by `(now, probe result)`.
//! - [`publish`]: the pure backend-set [`decide`](publish::decide) and the
//!   coalescing [`Publisher`](publish::Publisher) (`tokio::sync::watch`).
//! - `watch`: the only kube-rs code; `probe`: the HTTPS `/readyz` client.
//!
//! Compared with k0s's reconciler: no lock is held across an await or a
//! send (the state lives in one task), sends never block, every probe has a
//! hard timeout, and EndpointSlices are supported (and the default).
//!
//! ```no_run
//! # async fn example() -> Result<(), cplb_reconciler::Error> {
//! use cplb_reconciler::{Reconciler, ReconcilerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! let reconciler = Reconciler::new(ReconcilerConfig {
//!     api_port: 6443,
//!     ..ReconcilerConfig::default()
//! })
//! .await?;
//! let mut backends = reconciler.subscribe();
//! tokio::spawn(async move {
//!     // Level-triggered: always read the latest set after a change.
//!     while backends.changed().await.is_ok() {
//!         let set = backends.borrow_and_update().clone();
//!         println!("route to {set:?}");
//!     }
//! });
//! let cancel = CancellationToken::new();
//! reconciler.run(cancel).await; // returns after cancel, with every task ended
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kube::client::ConfigExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use rustls_pki_types::ServerName;
use tokio::sync::mpsc;
use tokio::sync::watch::{Receiver, Sender};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

pub mod endpoints;
mod error;
pub mod health;
mod probe;
pub mod publish;
mod watch;

pub use error::Error;
pub use health::{Health, Thresholds};
pub use probe::ProbeError;
pub use publish::Backends;

use health::HealthState;
use probe::HttpsProbe;
use publish::{Decision, Publisher, decide};

/// Where the list of apiservers comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// EndpointSlices if the apiserver serves `discovery.k8s.io/v1`, else Endpoints.
    #[default]
    Auto,
    /// EndpointSlices labelled `kubernetes.io/service-name=kubernetes` in `default`.
    EndpointSlices,
    /// `Endpoints default/kubernetes` (what k0s watches).
    Endpoints,
}

/// Reconciler settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcilerConfig {
    /// Kubeconfig of a client for the *local* apiserver (not the VIP); its
    /// client certificate and CA are also used for the health checks.
    pub kubeconfig: PathBuf,
    /// The apiserver port every backend is reached on (the port in the
    /// EndpointSlice/Endpoints object is ignored, as in k0s).
    pub api_port: u16,
    /// Which object lists the apiservers.
    pub source: Source,
    /// Health check path (k0s uses `/healthz`).
    pub health_path: String,
    /// Time between two checks of one backend.
    pub interval: Duration,
    /// Hard limit for one check (connect + TLS + answer); below `interval`.
    pub timeout: Duration,
    /// Consecutive results needed to flip a backend's state.
    pub thresholds: Thresholds,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            kubeconfig: PathBuf::from("/var/lib/k0s/pki/admin.conf"),
            api_port: 6443,
            source: Source::Auto,
            health_path: "/readyz".to_owned(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(800),
            thresholds: Thresholds::default(),
        }
    }
}

impl ReconcilerConfig {
    fn validate(&self) -> Result<(), Error> {
        if self.api_port == 0 {
            return Err(Error::Config("api_port must not be 0"));
        }
        if !self.health_path.starts_with('/') {
            return Err(Error::Config("health_path must start with '/'"));
        }
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err(Error::Config("interval and timeout must be positive"));
        }
        if self.timeout >= self.interval {
            return Err(Error::Config("timeout must be shorter than interval"));
        }
        Ok(())
    }
}

/// The health of one backend, for metrics and status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    /// Current state.
    pub health: Health,
    /// Checks completed.
    pub probes: u64,
    /// Consecutive failed checks.
    pub consecutive_failures: u32,
    /// When the state last changed.
    pub last_change: Option<Instant>,
    /// The latest check error.
    pub last_error: Option<String>,
    /// How long the latest check took.
    pub last_latency: Option<Duration>,
}

/// Every known backend's health, keyed by address.
pub type HealthSnapshot = BTreeMap<IpAddr, BackendStatus>;

/// One probe outcome, sent by a checker task to the reconciler loop.
struct Report {
    ip: IpAddr,
    checker_id: u64,
    result: Result<(), ProbeError>,
    /// How long the check took (connect + TLS + answer, or until the timeout).
    latency: Duration,
}

/// The reconciler loop's state; owned by that one task, so no lock exists.
struct LoopState {
    checkers: BTreeMap<IpAddr, Checker>,
    next_checker_id: u64,
    last_decision: Option<std::mem::Discriminant<Decision>>,
    reports: mpsc::UnboundedSender<Report>,
}

struct Checker {
    id: u64,
    cancel: CancellationToken,
    state: HealthState,
    last_latency: Option<Duration>,
}

/// The reconciler. Build it with [`Reconciler::new`], take receivers with
/// [`Reconciler::subscribe`], then drive it with [`Reconciler::run`].
pub struct Reconciler {
    config: ReconcilerConfig,
    client: kube::Client,
    probe: HttpsProbe,
    publisher: Publisher,
    health: Sender<HealthSnapshot>,
    checkers: TaskTracker,
    watchers: TaskTracker,
    watch_errors: Arc<AtomicU64>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("config", &self.config)
            .field("probe", &self.probe)
            .field("active_checkers", &self.checkers.len())
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    /// Loads the kubeconfig and builds the client and the health-check TLS
    /// configuration. Must be called inside a tokio runtime.
    pub async fn new(config: ReconcilerConfig) -> Result<Self, Error> {
        config.validate()?;
        // The workspace builds rustls with ring only; make it the process
        // default explicitly (an error just means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig =
            Kubeconfig::read_from(&config.kubeconfig).map_err(|source| Error::Kubeconfig {
                path: config.kubeconfig.clone(),
                source,
            })?;
        let kube_config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: config.kubeconfig.clone(),
                    source,
                })?;
        let tls = kube_config.rustls_client_config().map_err(Error::Tls)?;
        let server_name = kube_config
            .tls_server_name
            .as_ref()
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|_| Error::ServerName(name.clone()))
            })
            .transpose()?;
        let probe = HttpsProbe::new(
            tls,
            config.api_port,
            &config.health_path,
            config.timeout,
            server_name,
        );
        let client = kube::Client::try_from(kube_config).map_err(Error::Client)?;
        Ok(Self {
            config,
            client,
            probe,
            publisher: Publisher::new(),
            health: Sender::new(HealthSnapshot::new()),
            checkers: TaskTracker::new(),
            watchers: TaskTracker::new(),
            watch_errors: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Receives the published backend set. It starts empty; the first change
    /// is the first usable set. Coalescing: a slow reader sees the latest set.
    pub fn subscribe(&self) -> Receiver<Backends> {
        self.publisher.subscribe()
    }

    /// Receives per-backend health after every check.
    pub fn subscribe_health(&self) -> Receiver<HealthSnapshot> {
        self.health.subscribe()
    }

    /// Failed watch or discovery requests since start (each is retried).
    pub fn watch_errors(&self) -> u64 {
        self.watch_errors.load(Ordering::Relaxed)
    }

    /// Health-checker tasks currently alive.
    pub fn active_checkers(&self) -> usize {
        self.checkers.len()
    }

    /// Runs until `cancel` fires; returns only after every task it started
    /// (watcher and checkers) has ended.
    pub async fn run(&self, cancel: CancellationToken) {
        let span = info_span!("reconciler", component = "reconciler");
        self.run_inner(cancel).instrument(span).await;
    }

    async fn run_inner(&self, cancel: CancellationToken) {
        self.checkers.reopen();
        self.watchers.reopen();
        let (known_tx, mut known_rx) = tokio::sync::watch::channel(None::<BTreeSet<IpAddr>>);
        let watch_cancel = cancel.child_token();
        let client = self.client.clone();
        let source = self.config.source;
        let watcher_cancel = watch_cancel.clone();
        let errors = Arc::clone(&self.watch_errors);
        self.watchers.spawn(
            async move {
                if let Some(resolved) =
                    watch::resolve(&client, source, &watcher_cancel, &errors).await
                {
                    info!(source = ?resolved, "watching API server endpoints");
                    watch::run(client, resolved, known_tx, watcher_cancel, errors).await;
                }
            }
            .in_current_span(),
        );

        let (report_tx, mut report_rx) = mpsc::unbounded_channel::<Report>();
        let mut state = LoopState {
            checkers: BTreeMap::new(),
            next_checker_id: 0,
            last_decision: None,
            reports: report_tx,
        };
        let mut source_open = true;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                changed = known_rx.changed(), if source_open => {
                    if changed.is_err() {
                        source_open = false;
                        continue;
                    }
                    let known = known_rx.borrow_and_update().clone();
                    if let Some(known) = known {
                        self.on_known(&mut state, known, &cancel);
                    }
                }
                Some(report) = report_rx.recv() => self.on_report(&mut state, report),
            }
        }

        watch_cancel.cancel();
        for checker in state.checkers.values() {
            checker.cancel.cancel();
        }
        drop(report_rx);
        self.checkers.close();
        self.watchers.close();
        self.checkers.wait().await;
        self.watchers.wait().await;
        self.health.send_replace(HealthSnapshot::new());
        info!("reconciler stopped");
    }

    /// A new address list: stop checkers of vanished addresses, start
    /// checkers for new ones, republish.
    fn on_known(&self, state: &mut LoopState, known: BTreeSet<IpAddr>, cancel: &CancellationToken) {
        state.checkers.retain(|ip, checker| {
            let keep = known.contains(ip);
            if !keep {
                // k0s: "Stopping healthchecker".
                info!(backend = %ip, "address removed, stopping health checker");
                checker.cancel.cancel();
            }
            keep
        });
        for ip in known {
            if state.checkers.contains_key(&ip) {
                continue;
            }
            state.next_checker_id += 1;
            let checker = Checker {
                id: state.next_checker_id,
                cancel: cancel.child_token(),
                state: HealthState::new(self.config.thresholds),
                last_latency: None,
            };
            info!(backend = %ip, "address added, starting health checker");
            self.spawn_checker(
                ip,
                checker.id,
                checker.cancel.clone(),
                state.reports.clone(),
            );
            state.checkers.insert(ip, checker);
        }
        self.update_health(&state.checkers);
        self.publish(&state.checkers, &mut state.last_decision);
    }

    /// One probe result: update that backend, log and republish on a transition.
    fn on_report(&self, state: &mut LoopState, report: Report) {
        let Some(checker) = state.checkers.get_mut(&report.ip) else {
            return; // the address was removed meanwhile
        };
        if checker.id != report.checker_id {
            return; // a late report from a replaced checker
        }
        checker.last_latency = Some(report.latency);
        let now = tokio::time::Instant::now().into_std();
        let result = report.result.map_err(|e| e.to_string());
        let transition = checker.state.observe(now, result);
        if let Some(transition) = transition {
            let (from, to) = (transition.from, transition.to);
            if to == Health::Healthy {
                info!(backend = %report.ip, %from, %to,
                    "health check succeeded, address became active");
            } else {
                let reason = checker.state.last_error().unwrap_or_default();
                info!(backend = %report.ip, %from, %to, %reason,
                    "health check failed, address became inactive");
            }
        }
        self.update_health(&state.checkers);
        if transition.is_some() {
            self.publish(&state.checkers, &mut state.last_decision);
        }
    }

    fn spawn_checker(
        &self,
        ip: IpAddr,
        checker_id: u64,
        cancel: CancellationToken,
        reports: mpsc::UnboundedSender<Report>,
    ) {
        let probe = self.probe.clone();
        let interval = self.config.interval;
        let span = info_span!("health", component = "health", backend = %ip);
        self.checkers.spawn(
            async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => break,
                        _ = ticker.tick() => {}
                    }
                    let started = tokio::time::Instant::now();
                    let result = tokio::select! {
                        biased;
                        () = cancel.cancelled() => break,
                        result = probe.probe(ip) => result,
                    };
                    let latency = started.elapsed();
                    if let Err(error) = &result {
                        debug!(%error, "health check failed");
                    }
                    // Unbounded: never blocks; at most one report per interval per backend.
                    let report = Report {
                        ip,
                        checker_id,
                        result,
                        latency,
                    };
                    if reports.send(report).is_err() {
                        break;
                    }
                }
                debug!("stopping health checker");
            }
            .instrument(span),
        );
    }

    fn publish(
        &self,
        checkers: &BTreeMap<IpAddr, Checker>,
        last_decision: &mut Option<std::mem::Discriminant<Decision>>,
    ) {
        let known: BTreeMap<IpAddr, Health> = checkers
            .iter()
            .map(|(ip, checker)| (*ip, checker.state.health()))
            .collect();
        let decision = decide(&known, self.config.api_port);
        let kind = std::mem::discriminant(&decision);
        let first_of_kind = *last_decision != Some(kind);
        *last_decision = Some(kind);
        match decision {
            Decision::Healthy(backends) => {
                if self.publisher.publish(backends.clone()) {
                    info!(?backends, "published healthy API servers");
                }
            }
            Decision::FailOpen(backends) => {
                if first_of_kind {
                    warn!("no healthy API servers detected, publishing every known address");
                }
                if self.publisher.publish(backends.clone()) {
                    info!(?backends, "published every known API server (fail-open)");
                }
            }
            Decision::Pending => debug!("waiting for the first health checks"),
            Decision::NoneKnown => {
                if first_of_kind {
                    warn!("no API server addresses known, keeping the current backends");
                }
            }
        }
    }

    fn update_health(&self, checkers: &BTreeMap<IpAddr, Checker>) {
        let snapshot = checkers
            .iter()
            .map(|(ip, checker)| {
                (
                    *ip,
                    BackendStatus {
                        health: checker.state.health(),
                        probes: checker.state.probes(),
                        consecutive_failures: checker.state.consecutive_failures(),
                        last_change: checker.state.last_change(),
                        last_error: checker.state.last_error().map(str::to_owned),
                        last_latency: checker.last_latency,
                    },
                )
            })
            .collect();
        self.health.send_replace(snapshot);
    }
}
