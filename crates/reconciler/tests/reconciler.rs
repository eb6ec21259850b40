//! The reconciler against real (test) apiservers: three instances on
//! 127.0.0.1/.2/.3 sharing one store and one port, like three controllers.
//! Every wait is bounded; the 2 s bounds are the requirements.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cplb_reconciler::{
    Backends, ExclusionReason, Health, KubeconfigStatus, Reconciler, ReconcilerConfig,
    ReconcilerStatus, Source,
};
use cplb_testapi::{ApiServer, Cluster, Counters, ErrorFault, Kind, ServerOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

/// The bound for adding/removing/failing/recovering a backend.
const CHANGE_BOUND: Duration = Duration::from_secs(2);
/// Generous bound for start-up and watcher backoff (kube's default backoff
/// starts at 0.8 s and doubles).
const SLOW_BOUND: Duration = Duration::from_secs(30);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

struct Lab {
    cluster: Cluster,
    servers: Vec<ApiServer>,
    port: u16,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Lab {
    /// Starts one instance per address (the first one picks the shared port)
    /// and writes a kubeconfig pointing at `local`.
    async fn start(addresses: &[&str], local: &str, local_options: ServerOptions) -> Lab {
        init_tracing();
        let cluster = Cluster::new().unwrap();
        // A free port on 127.0.0.1 is almost always free on .2/.3 too; retry if not.
        for _attempt in 0..5 {
            let mut servers = Vec::new();
            let mut port = 0;
            let mut ok = true;
            for address in addresses {
                let options = if *address == local {
                    local_options.clone()
                } else {
                    ServerOptions::default()
                };
                match cluster
                    .start_with(SocketAddr::new(ip(address), port), options)
                    .await
                {
                    Ok(server) => {
                        port = server.addr().port();
                        servers.push(server);
                    }
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let kubeconfig = dir.path().join("admin.conf");
            cluster
                .write_kubeconfig(&kubeconfig, SocketAddr::new(ip(local), port))
                .unwrap();
            return Lab {
                cluster,
                servers,
                port,
                _dir: dir,
                kubeconfig,
            };
        }
        panic!("could not bind the test apiservers on one port");
    }

    async fn three() -> Lab {
        Self::start(
            &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
            "127.0.0.1",
            ServerOptions::default(),
        )
        .await
    }

    fn server(&self, address: &str) -> &ApiServer {
        self.servers
            .iter()
            .find(|s| s.addr().ip() == ip(address))
            .unwrap()
    }

    fn backends(&self, addresses: &[&str]) -> Backends {
        addresses
            .iter()
            .map(|a| SocketAddr::new(ip(a), self.port))
            .collect()
    }

    /// Writes both the slices and the Endpoints object, like an apiserver.
    fn set(&self, addresses: &[&str]) {
        let ips: Vec<IpAddr> = addresses.iter().map(|a| ip(a)).collect();
        self.cluster.store().set_kubernetes_backends(&ips, 6443);
    }

    fn config(&self, source: Source) -> ReconcilerConfig {
        ReconcilerConfig {
            kubeconfig: self.kubeconfig.clone(),
            api_port: self.port,
            source,
            // These apiservers listen on 127.0.0.x.
            allow_loopback: true,
            ..ReconcilerConfig::default()
        }
    }
}

struct Running {
    reconciler: Arc<Reconciler>,
    rx: watch::Receiver<Backends>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn start(config: ReconcilerConfig) -> Running {
        Self::spawn(Reconciler::new(config).await.unwrap())
    }

    fn spawn(reconciler: Reconciler) -> Running {
        let reconciler = Arc::new(reconciler);
        let rx = reconciler.subscribe();
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let reconciler = reconciler.clone();
            let cancel = cancel.clone();
            async move { reconciler.run(cancel).await }
        });
        Running {
            reconciler,
            rx,
            cancel,
            task,
        }
    }

    /// Waits until the published set equals `expected`, at most `bound`.
    async fn wait_for(&mut self, expected: &Backends, bound: Duration, what: &str) {
        let start = Instant::now();
        let deadline = start + bound;
        loop {
            if *self.rx.borrow_and_update() == *expected {
                // Visible with --nocapture: how long each step took.
                eprintln!("{what}: published after {:?}", start.elapsed());
                return;
            }
            let Ok(changed) = tokio::time::timeout_at(deadline, self.rx.changed()).await else {
                panic!(
                    "{what}: expected {expected:?} within {bound:?}, have {:?}",
                    *self.rx.borrow()
                );
            };
            changed.unwrap();
        }
    }

    /// Waits until every known backend has this health, at most `bound`.
    async fn wait_for_health(&self, addresses: &[&str], health: Health, bound: Duration) {
        let mut rx = self.reconciler.subscribe_health();
        let want: BTreeSet<IpAddr> = addresses.iter().map(|a| ip(a)).collect();
        let result = timeout(
            bound,
            rx.wait_for(|snapshot| {
                want.iter()
                    .all(|ip| snapshot.get(ip).is_some_and(|s| s.health == health))
            }),
        )
        .await;
        assert!(
            result.is_ok(),
            "{addresses:?} did not become {health} within {bound:?}"
        );
    }

    /// Waits until the reconciler's status satisfies `condition`, at most `bound`.
    async fn wait_for_status(
        &self,
        bound: Duration,
        what: &str,
        condition: impl FnMut(&ReconcilerStatus) -> bool,
    ) -> ReconcilerStatus {
        let mut rx = self.reconciler.subscribe_status();
        match timeout(bound, rx.wait_for(condition)).await {
            Ok(Ok(status)) => status.clone(),
            _ => panic!(
                "{what}: not reached within {bound:?}, status {:?}",
                self.reconciler.status()
            ),
        }
    }

    /// Waits until exactly `n` checker tasks are alive (a cancelled checker
    /// ends at its next await point), at most `bound`.
    async fn wait_for_checkers(&self, n: usize, bound: Duration) {
        let deadline = Instant::now() + bound;
        while self.reconciler.active_checkers() != n {
            assert!(
                Instant::now() < deadline,
                "{} checkers alive, expected {n}",
                self.reconciler.active_checkers()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Cancels and checks that `run` returns promptly with no task left.
    async fn shutdown(self) {
        self.cancel.cancel();
        timeout(Duration::from_secs(5), self.task)
            .await
            .expect("run() returns promptly after cancel")
            .unwrap();
        assert_eq!(self.reconciler.active_checkers(), 0, "leaked checker tasks");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_then_adds_and_removes() {
    let lab = Lab::three().await;
    lab.set(&["127.0.0.1", "127.0.0.2"]);
    let mut r = Running::start(lab.config(Source::Auto)).await;
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.2"]),
        SLOW_BOUND,
        "initial list",
    )
    .await;
    r.wait_for_checkers(2, CHANGE_BOUND).await;

    lab.set(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]),
        CHANGE_BOUND,
        "added endpoint",
    )
    .await;

    lab.set(&["127.0.0.1", "127.0.0.3"]);
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.3"]),
        CHANGE_BOUND,
        "removed endpoint",
    )
    .await;
    r.wait_for_checkers(2, CHANGE_BOUND).await;
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_readyz_leaves_and_recovers() {
    let lab = Lab::three().await;
    let all = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    lab.set(&all);
    let mut r = Running::start(lab.config(Source::EndpointSlices)).await;
    r.wait_for(&lab.backends(&all), SLOW_BOUND, "initial list")
        .await;

    lab.server("127.0.0.2").faults().set_fail_readiness(true);
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.3"]),
        CHANGE_BOUND,
        "readyz failing",
    )
    .await;
    let health = r.reconciler.subscribe_health().borrow().clone();
    let status = &health[&ip("127.0.0.2")];
    assert_eq!(status.health, Health::Unhealthy);
    assert!(
        status.last_error.as_deref().unwrap().contains("500"),
        "{status:?}"
    );
    let healthy = &health[&ip("127.0.0.1")];
    eprintln!(
        "check latency of a healthy backend: {:?}",
        healthy.last_latency
    );
    assert!(healthy.last_latency.is_some() && healthy.probes >= 1);

    lab.server("127.0.0.2").faults().set_fail_readiness(false);
    r.wait_for(&lab.backends(&all), CHANGE_BOUND, "readyz recovered")
        .await;
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_backend_leaves_and_recovers() {
    let lab = Lab::three().await;
    let all = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    lab.set(&all);
    let mut r = Running::start(ReconcilerConfig {
        // Worst case is interval + timeout: 1.4 s, inside the 2 s bound with
        // room for a loaded CI machine (the default 0.8 s gives 1.8 s).
        timeout: Duration::from_millis(400),
        ..lab.config(Source::Auto)
    })
    .await;
    r.wait_for(&lab.backends(&all), SLOW_BOUND, "initial list")
        .await;

    lab.server("127.0.0.3").faults().set_blackhole(true);
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.2"]),
        CHANGE_BOUND,
        "blackholed",
    )
    .await;
    let health = r.reconciler.subscribe_health().borrow().clone();
    assert!(
        health[&ip("127.0.0.3")]
            .last_error
            .as_deref()
            .unwrap()
            .contains("timed out"),
        "{health:?}"
    );

    lab.server("127.0.0.3").faults().set_blackhole(false);
    r.wait_for(&lab.backends(&all), CHANGE_BOUND, "blackhole lifted")
        .await;

    // A hanging backend (TLS fine, no answer) is cut off by the same timeout.
    lab.server("127.0.0.1").faults().set_hang(true);
    r.wait_for(
        &lab.backends(&["127.0.0.2", "127.0.0.3"]),
        CHANGE_BOUND,
        "hanging",
    )
    .await;
    lab.server("127.0.0.1").faults().set_hang(false);
    r.wait_for(&lab.backends(&all), CHANGE_BOUND, "hang lifted")
        .await;

    // Shut down while a probe of a blackholed backend is in flight.
    lab.server("127.0.0.2").faults().set_blackhole(true);
    r.shutdown().await;
}

impl Running {
    /// Waits until `address` has been checked `n` more times than now and
    /// returns its status then.
    async fn wait_for_probes(&self, address: &str, n: u64) -> cplb_reconciler::BackendStatus {
        let mut rx = self.reconciler.subscribe_health();
        let start = rx.borrow().get(&ip(address)).map_or(0, |s| s.probes);
        let snapshot = timeout(
            SLOW_BOUND,
            rx.wait_for(|h| h.get(&ip(address)).is_some_and(|s| s.probes >= start + n)),
        )
        .await
        .expect("checks keep coming")
        .unwrap()
        .clone();
        snapshot[&ip(address)].clone()
    }
}

/// Three apiservers, all listed, checked every 300 ms (250 ms timeout);
/// returns once the reconciler has published all three.
const THREE: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];

async fn three_checked_every_300ms() -> (Lab, Running) {
    let lab = Lab::three().await;
    lab.set(&THREE);
    let mut r = Running::start(ReconcilerConfig {
        interval: Duration::from_millis(300),
        timeout: Duration::from_millis(250),
        ..lab.config(Source::Auto)
    })
    .await;
    r.wait_for(&lab.backends(&THREE), SLOW_BOUND, "initial list")
        .await;
    (lab, r)
}

/// An idle agent pays one TLS handshake per backend, not one per check:
/// the checks of a healthy backend share one kept-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_of_a_healthy_backend_reuse_one_connection() {
    let (lab, r) = three_checked_every_300ms().await;
    let status = r.wait_for_probes("127.0.0.2", 10).await;
    let counters = lab.server("127.0.0.2").counters();
    let checks = Counters::get(&counters.health_checks);
    let connections = Counters::get(&counters.connections);
    assert_eq!(status.health, Health::Healthy, "{status:?}");
    // Only the checks connect to .2 (the watch uses .1); a check that
    // timed out on a loaded machine may have dialled once more.
    assert!(
        connections * 3 <= checks,
        "{connections} connections for {checks} checks"
    );
    r.shutdown().await;
}

/// A kept connection that the server closed since the last check (an
/// apiserver's idle timeout or restart) is no failed check: the check
/// dials again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_is_no_failed_check() {
    let (lab, r) = three_checked_every_300ms().await;
    let healthy = r.wait_for_probes("127.0.0.2", 1).await;
    let server = lab.server("127.0.0.2");
    server.faults().set_close_connections(true);
    let before = Counters::get(&server.counters().connections);
    let status = r.wait_for_probes("127.0.0.2", 6).await;
    let dialled = Counters::get(&server.counters().connections) - before;
    assert!(
        dialled >= 4,
        "the server closed connections: {dialled} dials"
    );
    // No failed check meanwhile: with fall 1 one would have flipped it.
    assert_eq!(status.health, Health::Healthy, "{status:?}");
    assert_eq!(status.last_change, healthy.last_change, "{status:?}");
    assert_eq!(status.consecutive_failures, 0, "{status:?}");
    assert_eq!(*r.rx.borrow(), lab.backends(&THREE));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watch_and_gone_relist_keep_the_set() {
    // No bookmarks, so that the watcher's version stays behind the compaction.
    let lab = Lab::start(
        &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        "127.0.0.1",
        ServerOptions {
            bookmark_interval: Duration::from_secs(3600),
            ..ServerOptions::default()
        },
    )
    .await;
    let all = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    lab.set(&all);
    let mut r = Running::start(lab.config(Source::EndpointSlices)).await;
    r.wait_for(&lab.backends(&all), SLOW_BOUND, "initial list")
        .await;
    let local = lab.server("127.0.0.1");

    // A dropped stream: the watcher re-watches from its last version.
    let watches = Counters::get(&local.counters().watches);
    local.faults().drop_watches();
    let deadline = Instant::now() + SLOW_BOUND;
    while Counters::get(&local.counters().watches) == watches {
        assert!(
            Instant::now() < deadline,
            "no re-watch after a dropped stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Compaction + dropped stream: the re-watch gets 410 Gone and relists.
    let lists = Counters::get(&local.counters().lists);
    // An unrelated change moves the store past the watcher's version, then
    // compaction makes that version unavailable.
    let mut other = cplb_testapi::endpoint_slice("other", &[ip("192.0.2.9")], 80);
    other["metadata"]["labels"]["kubernetes.io/service-name"] = "other".into();
    lab.cluster.store().apply(Kind::EndpointSlice, other);
    lab.cluster.store().compact();
    local.faults().drop_watches();
    let deadline = Instant::now() + SLOW_BOUND;
    while Counters::get(&local.counters().lists) == lists {
        assert!(Instant::now() < deadline, "no relist after 410 Gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !r.rx.has_changed().unwrap(),
        "the published set changed across the relist"
    );
    assert_eq!(*r.rx.borrow(), lab.backends(&all));

    // The new watch is live.
    lab.set(&["127.0.0.1", "127.0.0.2"]);
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.2"]),
        CHANGE_BOUND,
        "after relist",
    )
    .await;
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_or_throttling_local_apiserver_keeps_the_set() {
    // The local apiserver (127.0.0.4) is not one of the backends, so stopping
    // it only breaks the watch, not the health checks.
    let mut lab = Lab::start(
        &["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"],
        "127.0.0.4",
        ServerOptions::default(),
    )
    .await;
    let all = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    lab.set(&all);
    let mut r = Running::start(lab.config(Source::Auto)).await;
    r.wait_for(&lab.backends(&all), SLOW_BOUND, "initial list")
        .await;

    // 429 with Retry-After on every API call, and the stream dropped.
    let local = lab.server("127.0.0.4");
    local.faults().set_error(Some(ErrorFault {
        status: 429,
        retry_after_secs: 1,
    }));
    local.faults().drop_watches();
    let deadline = Instant::now() + SLOW_BOUND;
    while Counters::get(&local.counters().injected_errors) == 0 {
        assert!(Instant::now() < deadline, "the watcher did not retry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*r.rx.borrow(), lab.backends(&all));
    // Then the local apiserver stops listening altogether.
    let position = lab
        .servers
        .iter()
        .position(|s| s.addr().ip() == ip("127.0.0.4"))
        .unwrap();
    let local = lab.servers.remove(position);
    let local_addr = local.addr();
    local.stop().await;
    lab.set(&["127.0.0.1", "127.0.0.2"]);
    // Nothing can be learnt meanwhile: the set stays as it was.
    assert!(
        timeout(Duration::from_secs(3), r.rx.changed())
            .await
            .is_err(),
        "the set changed while the local apiserver was unreachable: {:?}",
        *r.rx.borrow()
    );
    assert_eq!(*r.rx.borrow(), lab.backends(&all));

    // The apiserver comes back: the watcher relists and catches up.
    let restarted = lab.cluster.start(local_addr).await.unwrap();
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.2"]),
        SLOW_BOUND,
        "after restart",
    )
    .await;
    lab.servers.push(restarted);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_unhealthy_fails_open() {
    let lab = Lab::three().await;
    let all = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    for server in &lab.servers {
        server.faults().set_fail_readiness(true);
    }
    lab.set(&all);
    let mut r = Running::start(lab.config(Source::Auto)).await;
    r.wait_for_health(&all, Health::Unhealthy, SLOW_BOUND).await;
    r.wait_for(&lab.backends(&all), CHANGE_BOUND, "fail-open")
        .await;

    lab.server("127.0.0.2").faults().set_fail_readiness(false);
    r.wait_for(&lab.backends(&["127.0.0.2"]), CHANGE_BOUND, "one recovered")
        .await;

    // Removing every address keeps what the proxy has.
    lab.set(&[]);
    assert!(
        timeout(Duration::from_secs(2), r.rx.changed())
            .await
            .is_err(),
        "an empty endpoint list must not empty the proxy"
    );
    assert_eq!(*r.rx.borrow(), lab.backends(&["127.0.0.2"]));
    r.wait_for_checkers(0, CHANGE_BOUND).await;
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_source_gives_the_same_answers() {
    let lab = Lab::three().await;
    lab.set(&["127.0.0.1", "127.0.0.2"]);
    let mut r = Running::start(lab.config(Source::Endpoints)).await;
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.2"]),
        SLOW_BOUND,
        "initial list",
    )
    .await;
    lab.set(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]),
        CHANGE_BOUND,
        "added endpoint",
    )
    .await;
    lab.server("127.0.0.1").faults().set_fail_readiness(true);
    r.wait_for(
        &lab.backends(&["127.0.0.2", "127.0.0.3"]),
        CHANGE_BOUND,
        "failing",
    )
    .await;
    lab.set(&["127.0.0.1", "127.0.0.3"]);
    r.wait_for(
        &lab.backends(&["127.0.0.3"]),
        CHANGE_BOUND,
        "removed endpoint",
    )
    .await;
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_selection() {
    // Slices and Endpoints disagree on purpose, to see which one is read.
    let slices_and_endpoints = |lab: &Lab| {
        let store = lab.cluster.store();
        store.set_kubernetes_slice("kubernetes", &[ip("127.0.0.1"), ip("127.0.0.2")], 6443);
        store.set_kubernetes_endpoints(&[ip("127.0.0.1"), ip("127.0.0.3")], 6443);
    };

    let lab = Lab::three().await;
    slices_and_endpoints(&lab);
    let mut r = Running::start(lab.config(Source::Auto)).await;
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.2"]),
        SLOW_BOUND,
        "auto → slices",
    )
    .await;
    r.shutdown().await;
    let mut r = Running::start(lab.config(Source::Endpoints)).await;
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.3"]),
        SLOW_BOUND,
        "endpoints",
    )
    .await;
    r.shutdown().await;
    // A mirrored slice with a generated name is part of the union.
    lab.cluster.store().apply(
        Kind::EndpointSlice,
        cplb_testapi::endpoint_slice("kubernetes-x7k2q", &[ip("127.0.0.3")], 6443),
    );
    let mut r = Running::start(lab.config(Source::EndpointSlices)).await;
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]),
        SLOW_BOUND,
        "union of slices",
    )
    .await;
    r.shutdown().await;

    // An apiserver without the EndpointSlice API: Auto falls back to Endpoints.
    let old = Lab::start(
        &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        "127.0.0.1",
        ServerOptions {
            serve_endpoint_slices: false,
            ..ServerOptions::default()
        },
    )
    .await;
    slices_and_endpoints(&old);
    let mut r = Running::start(old.config(Source::Auto)).await;
    r.wait_for(
        &old.backends(&["127.0.0.1", "127.0.0.3"]),
        SLOW_BOUND,
        "auto → endpoints",
    )
    .await;
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_rejected() {
    let lab = Lab::three().await;
    let bad = ReconcilerConfig {
        timeout: Duration::from_secs(2),
        ..lab.config(Source::Auto)
    };
    assert!(Reconciler::new(bad).await.is_err());
    let missing = ReconcilerConfig {
        kubeconfig: lab.kubeconfig.with_file_name("missing.conf"),
        ..lab.config(Source::Auto)
    };
    let error = Reconciler::new(missing).await.unwrap_err();
    assert!(error.to_string().contains("missing.conf"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_address_families() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 loopback on this machine");
        return;
    }
    let lab = Lab::start(&["127.0.0.1", "::1"], "127.0.0.1", ServerOptions::default()).await;
    // One IPv4 slice and one IPv6 slice, as a dual-stack apiserver writes them.
    lab.set(&["127.0.0.1", "::1"]);
    let mut r = Running::start(lab.config(Source::Auto)).await;
    r.wait_for(
        &lab.backends(&["127.0.0.1", "::1"]),
        SLOW_BOUND,
        "dual stack",
    )
    .await;
    lab.server("::1").faults().set_fail_readiness(true);
    r.wait_for(
        &lab.backends(&["127.0.0.1"]),
        CHANGE_BOUND,
        "IPv6 backend failing",
    )
    .await;
    r.shutdown().await;
}

/// Issue 14 F6: endpoint addresses that would make the proxy loop into
/// itself (the VIP, loopback, unspecified) or that are no TCP destination
/// are never health-checked or published. Run in a network namespace of
/// its own, so that the real backend has a non-loopback address, and with
/// live apiservers on the VIP and on 127.0.0.1 that would pass the checks.
#[test]
fn excluded_endpoint_addresses_are_never_published() {
    init_tracing();
    let mut lab = cplb_e2e::Lab::new().unwrap();
    let host = lab.add_host("rc", Some("192.0.2.10/24"), None).unwrap();
    for cidr in ["192.0.2.11/24", "192.0.2.100/32"] {
        lab.ip(&host.netns, ["addr", "add", cidr, "dev", &host.ifname])
            .unwrap();
    }
    cplb_e2e::in_netns(&host.netns, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(excluded_addresses_in_netns());
    })
    .unwrap();
}

async fn excluded_addresses_in_netns() {
    let cluster = Cluster::new().unwrap();
    let real = cluster
        .start("192.0.2.11:0".parse().unwrap())
        .await
        .unwrap();
    let port = real.addr().port();
    let _vip = cluster
        .start(SocketAddr::new(ip("192.0.2.100"), port))
        .await
        .unwrap();
    let _loopback = cluster
        .start(SocketAddr::new(ip("127.0.0.1"), port))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("admin.conf");
    cluster.write_kubeconfig(&kubeconfig, real.addr()).unwrap();
    let listed: Vec<IpAddr> = [
        "192.0.2.100",
        "127.0.0.1",
        "0.0.0.0",
        "192.0.2.11",
        "169.254.1.1",
        "224.0.0.18",
    ]
    .iter()
    .map(|a| ip(a))
    .collect();
    cluster.store().set_kubernetes_backends(&listed, 6443);

    let mut r = Running::start(ReconcilerConfig {
        kubeconfig,
        api_port: port,
        excluded_addresses: [ip("192.0.2.100")].into(),
        ..ReconcilerConfig::default()
    })
    .await;
    let only_real: Backends = [SocketAddr::new(ip("192.0.2.11"), port)].into();
    r.wait_for(&only_real, SLOW_BOUND, "only the real apiserver")
        .await;
    // Every address that is checked at all has had its first check: nothing
    // else can still join the set.
    let mut health = r.reconciler.subscribe_health();
    timeout(
        SLOW_BOUND,
        health.wait_for(|s| !s.is_empty() && s.values().all(|b| b.probes >= 1)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(*r.rx.borrow(), only_real);
    let checked: Vec<IpAddr> = health.borrow().keys().copied().collect();
    assert_eq!(checked, [ip("192.0.2.11")]);
    let status = r.reconciler.status();
    assert_eq!(
        status.excluded,
        [
            (ip("0.0.0.0"), ExclusionReason::Unspecified),
            (ip("127.0.0.1"), ExclusionReason::Loopback),
            (ip("169.254.1.1"), ExclusionReason::LinkLocal),
            (ip("192.0.2.100"), ExclusionReason::Configured),
            (ip("224.0.0.18"), ExclusionReason::Multicast),
        ]
    );
    assert_eq!(status.excluded_total, 5);
    assert_eq!(status.checkers, 1);

    // The list changes: addresses that stay excluded are not counted again.
    cluster
        .store()
        .set_kubernetes_backends(&[ip("192.0.2.11"), ip("192.0.2.100")], 6443);
    let status = r
        .wait_for_status(CHANGE_BOUND, "shorter exclusion list", |s| {
            s.excluded.len() == 1
        })
        .await;
    assert_eq!(
        status.excluded,
        [(ip("192.0.2.100"), ExclusionReason::Configured)]
    );
    assert_eq!(status.excluded_total, 5);
    assert_eq!(*r.rx.borrow(), only_real);
    r.shutdown().await;
}

/// Issue 12: with `new_retrying` a missing or broken kubeconfig is retried
/// in the background, with its cause in the status, publishing nothing
/// until it loads; then the reconciler works as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_that_appears_later_is_retried() {
    let lab = Lab::three().await;
    lab.set(&["127.0.0.1", "127.0.0.2"]);
    let later = lab.kubeconfig.with_file_name("later.conf");
    let reconciler = Reconciler::new_retrying(ReconcilerConfig {
        kubeconfig: later.clone(),
        kubeconfig_retry: Duration::from_millis(50),
        ..lab.config(Source::Auto)
    })
    .unwrap();
    let mut r = Running::spawn(reconciler);

    let status = r
        .wait_for_status(
            SLOW_BOUND,
            "missing kubeconfig",
            |s| matches!(s.kubeconfig, KubeconfigStatus::Failed { attempts, .. } if attempts >= 2),
        )
        .await;
    let KubeconfigStatus::Failed { error, .. } = status.kubeconfig else {
        unreachable!()
    };
    assert!(
        error.contains("later.conf") && error.contains("No such file"),
        "the cause is shown: {error}"
    );

    // The path points at a key file: the error says so without quoting it.
    std::fs::write(
        &later,
        "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let status = r
        .wait_for_status(SLOW_BOUND, "key file as kubeconfig", |s| {
            matches!(&s.kubeconfig, KubeconfigStatus::Failed { error, .. } if !error.contains("No such file"))
        })
        .await;
    let KubeconfigStatus::Failed { error, .. } = status.kubeconfig else {
        unreachable!()
    };
    assert!(error.contains("not a valid kubeconfig"), "{error}");
    assert!(!error.contains("TOPSECRET"), "the key leaked: {error}");
    assert!(r.rx.borrow().is_empty(), "published without a kubeconfig");
    assert_eq!(r.reconciler.active_checkers(), 0);

    // The kubeconfig appears: the reconciler starts publishing.
    std::fs::copy(&lab.kubeconfig, &later).unwrap();
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.2"]),
        SLOW_BOUND,
        "kubeconfig written later",
    )
    .await;
    assert_eq!(r.reconciler.status().kubeconfig, KubeconfigStatus::Loaded);
    r.shutdown().await;
}

/// Cancelling a reconciler that is still waiting for its kubeconfig ends
/// `run` promptly, with nothing left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_waiting_for_the_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let reconciler = Reconciler::new_retrying(ReconcilerConfig {
        kubeconfig: dir.path().join("never.conf"),
        kubeconfig_retry: Duration::from_secs(3600),
        ..ReconcilerConfig::default()
    })
    .unwrap();
    let r = Running::spawn(reconciler);
    r.wait_for_status(SLOW_BOUND, "first attempt", |s| {
        matches!(s.kubeconfig, KubeconfigStatus::Failed { attempts: 1, .. })
    })
    .await;
    r.shutdown().await;
}

/// A huge endpoint list starts at most `max_backends` checker tasks; the
/// rest are skipped (and listed) until a place frees up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkers_are_capped_for_huge_endpoint_lists() {
    let lab = Lab::three().await;
    lab.set(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    let mut r = Running::start(ReconcilerConfig {
        max_backends: 2,
        ..lab.config(Source::Auto)
    })
    .await;
    r.wait_for(
        &lab.backends(&["127.0.0.1", "127.0.0.2"]),
        SLOW_BOUND,
        "the first two in address order",
    )
    .await;
    let status = r.reconciler.status();
    assert_eq!(status.skipped, [ip("127.0.0.3")]);
    assert_eq!(status.checkers, 2);
    r.wait_for_checkers(2, CHANGE_BOUND).await;

    // One leaves: the skipped one takes its place.
    lab.set(&["127.0.0.2", "127.0.0.3"]);
    r.wait_for(
        &lab.backends(&["127.0.0.2", "127.0.0.3"]),
        CHANGE_BOUND,
        "skipped address admitted",
    )
    .await;
    assert!(r.reconciler.status().skipped.is_empty());
    r.shutdown().await;
}
