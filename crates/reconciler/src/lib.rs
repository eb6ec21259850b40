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
//!
//! When the kubeconfig may not exist yet (k0s writes it after starting
//! cplb), build with [`Reconciler::new_retrying`] instead: `run` then loads
//! it itself, retrying every [`ReconcilerConfig::kubeconfig_retry`] and
//! publishing nothing meanwhile; [`Reconciler::subscribe_status`] says why
//! it is still waiting.
//!
//! Endpoint addresses that must never become backends (the VIPs, loopback,
//! unspecified, multicast, link-local, broadcast; see
//! [`endpoints::exclusion`]) are dropped before health checking, logged once
//! each and listed in [`ReconcilerStatus::excluded`].
#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

pub use endpoints::ExclusionReason;
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
    /// Addresses never used as backends even when the endpoints list them:
    /// the VIPs (with cplb's OUTPUT rule a VIP backend makes the proxy
    /// connect to itself). Unspecified, loopback, multicast, link-local and
    /// broadcast addresses are always excluded.
    pub excluded_addresses: BTreeSet<IpAddr>,
    /// Accept loopback endpoint addresses. Only for tests and single-host
    /// labs whose apiservers listen on `127.0.0.0/8`: on a real node a
    /// loopback backend is this node, whatever the endpoints meant.
    pub allow_loopback: bool,
    /// With [`Reconciler::new_retrying`]: time between two attempts to load
    /// a missing or broken kubeconfig.
    pub kubeconfig_retry: Duration,
    /// At most this many addresses are health-checked and used (one checker
    /// task each); the rest are skipped, logged and counted in
    /// [`ReconcilerStatus::skipped`]. Addresses already checked keep their
    /// place; new ones are taken in address order.
    pub max_backends: usize,
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
            excluded_addresses: BTreeSet::new(),
            allow_loopback: false,
            kubeconfig_retry: Duration::from_secs(5),
            max_backends: 64,
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
        if self.kubeconfig_retry.is_zero() {
            return Err(Error::Config("kubeconfig_retry must be positive"));
        }
        if self.max_backends == 0 {
            return Err(Error::Config("max_backends must be positive"));
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

/// Where the kubeconfig stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KubeconfigStatus {
    /// Not tried yet.
    #[default]
    Pending,
    /// Loaded; the watch and the health checks run.
    Loaded,
    /// The latest attempt failed; retried every `kubeconfig_retry`.
    Failed {
        /// Why, with its cause (a YAML error only by position: its text
        /// may quote the file, a private key if the path is wrong).
        error: String,
        /// Failed attempts so far.
        attempts: u64,
    },
}

/// The reconciler's own state, for metrics and status output. Published on
/// every change through [`Reconciler::subscribe_status`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReconcilerStatus {
    /// Whether the kubeconfig has loaded, or why not.
    pub kubeconfig: KubeconfigStatus,
    /// Failed watch or discovery requests since start (each is retried).
    pub watch_errors: u64,
    /// Endpoint addresses currently excluded, with the reason, sorted.
    pub excluded: Vec<(IpAddr, ExclusionReason)>,
    /// Exclusions since start: each address counts once per appearance in
    /// the endpoints.
    pub excluded_total: u64,
    /// Addresses currently skipped because of
    /// [`ReconcilerConfig::max_backends`], sorted.
    pub skipped: Vec<IpAddr>,
    /// Health-checker tasks the reconciler has started and not yet stopped.
    pub checkers: usize,
}

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
    /// Addresses excluded by the latest endpoint list (logged when they appear).
    excluded: BTreeMap<IpAddr, ExclusionReason>,
    /// Addresses over `max_backends` in the latest list (logged when they appear).
    skipped: BTreeSet<IpAddr>,
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

/// What the kubeconfig gives: the API client and the health probe.
#[derive(Clone)]
struct Connection {
    client: kube::Client,
    probe: HttpsProbe,
}

/// The reconciler. Build it with [`Reconciler::new`] (or
/// [`Reconciler::new_retrying`]), take receivers with
/// [`Reconciler::subscribe`], then drive it with [`Reconciler::run`].
pub struct Reconciler {
    config: ReconcilerConfig,
    /// Set by `new`, or by `run` once the kubeconfig has loaded.
    connection: Mutex<Option<Connection>>,
    publisher: Publisher,
    health: Sender<HealthSnapshot>,
    status: Arc<Sender<ReconcilerStatus>>,
    checkers: TaskTracker,
    watchers: TaskTracker,
    watch_errors: Arc<AtomicU64>,
}

/// Counts failed watch and discovery requests, publishing each in the status.
#[derive(Clone)]
pub(crate) struct WatchErrors {
    count: Arc<AtomicU64>,
    status: Arc<Sender<ReconcilerStatus>>,
}

impl WatchErrors {
    pub(crate) fn record(&self) {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        self.status
            .send_modify(|status| status.watch_errors = count);
    }
}

/// `error` and its cause on one line, for logs and status. A YAML error is
/// reduced to its position: its message may quote the file, and a
/// kubeconfig path pointing at a private key must not put the key in logs.
fn describe(error: &Error) -> String {
    use std::error::Error as _;
    if let Error::Kubeconfig {
        path,
        source: kube::config::KubeconfigError::Parse(parse),
    } = error
    {
        let at = parse
            .location()
            .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
            .unwrap_or_default();
        return format!(
            "failed to load kubeconfig {}: not a valid kubeconfig YAML file{at} \
             (details not shown, they may quote the file)",
            path.display()
        );
    }
    let mut text = error.to_string();
    if let Some(source) = error.source() {
        text.push_str(": ");
        text.push_str(&source.to_string());
    }
    text
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("config", &self.config)
            .field("active_checkers", &self.checkers.len())
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    /// Loads the kubeconfig and builds the client and the health-check TLS
    /// configuration. Must be called inside a tokio runtime.
    pub async fn new(config: ReconcilerConfig) -> Result<Self, Error> {
        let reconciler = Self::new_retrying(config)?;
        let connection = reconciler.load().await?;
        reconciler.status.send_modify(|status| {
            status.kubeconfig = KubeconfigStatus::Loaded;
        });
        *reconciler.lock_connection() = Some(connection);
        Ok(reconciler)
    }

    /// Checks the configuration only; [`Reconciler::run`] loads the
    /// kubeconfig, retrying every `kubeconfig_retry` while it is missing or
    /// broken (each failure logged with its cause and shown in
    /// [`ReconcilerStatus::kubeconfig`]) and publishing nothing meanwhile.
    /// The error is a configuration that can never work.
    pub fn new_retrying(config: ReconcilerConfig) -> Result<Self, Error> {
        config.validate()?;
        let status = Arc::new(Sender::new(ReconcilerStatus::default()));
        Ok(Self {
            config,
            connection: Mutex::new(None),
            publisher: Publisher::new(),
            health: Sender::new(HealthSnapshot::new()),
            status,
            checkers: TaskTracker::new(),
            watchers: TaskTracker::new(),
            watch_errors: Arc::new(AtomicU64::new(0)),
        })
    }

    fn lock_connection(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        // Only ever replaced whole: a poisoned lock holds consistent data.
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the kubeconfig and builds the client and the probe.
    async fn load(&self) -> Result<Connection, Error> {
        let config = &self.config;
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
        Ok(Connection { client, probe })
    }

    /// The connection from `new` or an earlier run, else the kubeconfig
    /// loaded now, retried until it loads. `None` means cancelled.
    async fn connect(&self, cancel: &CancellationToken) -> Option<Connection> {
        if let Some(connection) = self.lock_connection().clone() {
            return Some(connection);
        }
        let retry = self.config.kubeconfig_retry;
        let mut attempts = 0u64;
        let mut last_error = String::new();
        loop {
            let loaded = tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                loaded = self.load() => loaded,
            };
            match loaded {
                Ok(connection) => {
                    info!(kubeconfig = %self.config.kubeconfig.display(), attempts,
                        "kubeconfig loaded");
                    *self.lock_connection() = Some(connection.clone());
                    self.status
                        .send_modify(|status| status.kubeconfig = KubeconfigStatus::Loaded);
                    return Some(connection);
                }
                Err(error) => {
                    attempts += 1;
                    let error = describe(&error);
                    // Once per distinct cause: a kubeconfig k0s has not
                    // written yet fails the same way for a while.
                    if error == last_error {
                        debug!(%error, attempts, "kubeconfig still not loadable");
                    } else {
                        warn!(%error, retry_in = ?retry,
                            "cannot load the kubeconfig; publishing no backends until it loads");
                    }
                    self.status.send_modify(|status| {
                        status.kubeconfig = KubeconfigStatus::Failed {
                            error: error.clone(),
                            attempts,
                        };
                    });
                    last_error = error;
                }
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(retry) => {}
            }
        }
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

    /// Receives the reconciler's own state (kubeconfig, exclusions, watch
    /// errors, checkers) after every change.
    pub fn subscribe_status(&self) -> Receiver<ReconcilerStatus> {
        self.status.subscribe()
    }

    /// The reconciler's own state now.
    pub fn status(&self) -> ReconcilerStatus {
        self.status.borrow().clone()
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
        let Some(Connection { client, probe }) = self.connect(&cancel).await else {
            info!("reconciler stopped before its kubeconfig loaded");
            return;
        };
        self.checkers.reopen();
        self.watchers.reopen();
        let (known_tx, mut known_rx) = tokio::sync::watch::channel(None::<BTreeSet<IpAddr>>);
        let watch_cancel = cancel.child_token();
        let source = self.config.source;
        let watcher_cancel = watch_cancel.clone();
        let errors = WatchErrors {
            count: Arc::clone(&self.watch_errors),
            status: Arc::clone(&self.status),
        };
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
            excluded: BTreeMap::new(),
            skipped: BTreeSet::new(),
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
                        self.on_known(&mut state, known, &probe, &cancel);
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
        self.status.send_modify(|status| {
            status.excluded.clear();
            status.skipped.clear();
            status.checkers = 0;
        });
        info!("reconciler stopped");
    }

    /// A new address list: drop excluded addresses, stop checkers of
    /// vanished addresses, start checkers for new ones (up to
    /// `max_backends`), republish.
    fn on_known(
        &self,
        state: &mut LoopState,
        known: BTreeSet<IpAddr>,
        probe: &HttpsProbe,
        cancel: &CancellationToken,
    ) {
        let (usable, excluded) = endpoints::partition(
            &known,
            &self.config.excluded_addresses,
            self.config.allow_loopback,
        );
        let mut newly_excluded = 0u64;
        for (ip, reason) in &excluded {
            if state.excluded.get(ip) != Some(reason) {
                newly_excluded += 1;
                warn!(address = %ip, %reason,
                    "endpoint address excluded, it is never used as a backend");
            }
        }
        for ip in state.excluded.keys() {
            if !excluded.contains_key(ip) {
                info!(address = %ip, "excluded endpoint address no longer listed");
            }
        }
        state.excluded = excluded;

        state.checkers.retain(|ip, checker| {
            let keep = usable.contains(ip);
            if !keep {
                // k0s: "Stopping healthchecker".
                info!(backend = %ip, "address removed, stopping health checker");
                checker.cancel.cancel();
            }
            keep
        });
        let mut skipped = BTreeSet::new();
        for ip in usable {
            if state.checkers.contains_key(&ip) {
                continue;
            }
            if state.checkers.len() >= self.config.max_backends {
                if !state.skipped.contains(&ip) {
                    warn!(address = %ip, max_backends = self.config.max_backends,
                        "too many API server addresses, skipping this one");
                }
                skipped.insert(ip);
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
                probe.clone(),
                checker.id,
                checker.cancel.clone(),
                state.reports.clone(),
            );
            state.checkers.insert(ip, checker);
        }
        state.skipped = skipped;
        self.status.send_modify(|status| {
            status.excluded = state.excluded.iter().map(|(ip, r)| (*ip, *r)).collect();
            status.excluded_total += newly_excluded;
            status.skipped = state.skipped.iter().copied().collect();
            status.checkers = state.checkers.len();
        });
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
        probe: HttpsProbe,
        checker_id: u64,
        cancel: CancellationToken,
        reports: mpsc::UnboundedSender<Report>,
    ) {
        let interval = self.config.interval;
        let span = info_span!("health", component = "health", backend = %ip);
        self.checkers.spawn(
            async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // One kept-alive connection for this backend's checks.
                let mut session = probe.session(ip);
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
                        result = session.probe() => result,
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
