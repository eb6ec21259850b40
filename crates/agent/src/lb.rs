//! The load-balancing half of the agent: the :6444 proxy on its own
//! thread, the reconciler that feeds it the apiservers, and the REDIRECT
//! rules that send VIP:apiPort to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cplb_proxy::{BackendsHandle, ProxyThread};
use cplb_reconciler::{HealthSnapshot, Reconciler, ReconcilerStatus};
use cplb_vrrp::io::status::DriverStatus;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::error::RunError;
use crate::health::node_verdict;
use crate::netfilter::{Redirect, Repair, Rules};
use crate::plan::LoadBalancerPlan;

/// The proxy, the reconciler and the rules, running.
pub(crate) struct LoadBalancer {
    proxy_task: JoinHandle<Result<(), cplb_proxy::ProxyError>>,
    proxy_cancel: CancellationToken,
    pub(crate) proxy_listen: SocketAddr,
    pub(crate) backends: BackendsHandle,
    reconciler_task: JoinHandle<()>,
    reconciler_cancel: CancellationToken,
    pub(crate) health: watch::Receiver<HealthSnapshot>,
    pub(crate) reconciler_status: watch::Receiver<ReconcilerStatus>,
    pub(crate) updates: Arc<AtomicU64>,
    pub(crate) rules: Rules,
    pub(crate) redirects: Vec<Redirect>,
    pub(crate) rules_in_place: bool,
    /// The periodic rule check, off the runtime.
    repair: Repair,
    pub(crate) api_port: u16,
}

impl LoadBalancer {
    /// Starts the proxy, then the reconciler, then installs the rules.
    pub(crate) async fn start(plan: &LoadBalancerPlan) -> Result<LoadBalancer, RunError> {
        let (health_tx, health) = watch::channel(HealthSnapshot::new());
        let updates = Arc::new(AtomicU64::new(0));
        let reconciler_cancel = CancellationToken::new();
        // Only the settings are checked here: `run` loads the kubeconfig,
        // retrying while it is missing or broken (k0s writes it after
        // starting us), and the status says why it is still waiting.
        let reconciler = Reconciler::new_retrying(plan.reconciler.clone())?;
        let reconciler_status = reconciler.subscribe_status();

        // On a thread of its own, so proxy load never delays VRRP adverts.
        let proxy_cancel = CancellationToken::new();
        let inherited = inherited_listener(plan.proxy.listen)?;
        let proxy =
            ProxyThread::spawn_with(plan.proxy.clone(), inherited, proxy_cancel.clone()).await?;
        let proxy_listen = proxy.local_addr();
        let backends = proxy.backends_handle();
        info!(component = "proxy", listen = %proxy_listen, "proxy listening");

        // The proxy keeps its bootstrap backend until the reconciler knows
        // the apiservers.
        let reconciler_task = tokio::spawn(run_reconciler(
            reconciler,
            backends.clone(),
            health_tx,
            Arc::clone(&updates),
            reconciler_cancel.clone(),
        ));
        let proxy_task = tokio::spawn(proxy.join());

        let redirects = plan.redirects.clone();
        // Off the runtime and bounded in time; a failed install removes
        // what it added, so no half-installed rule set stays behind.
        let installed = match Rules::detect(plan.netfilter, plan.output_rule).await {
            Ok(rules) => rules.install(&redirects).await.map(|()| rules),
            Err(e) => Err(e),
        };
        let rules = match installed {
            Ok(rules) => rules,
            Err(e) => {
                reconciler_cancel.cancel();
                proxy_cancel.cancel();
                let _ = reconciler_task.await;
                let _ = proxy_task.await;
                return Err(e.into());
            }
        };
        info!(
            component = "netfilter",
            backend = rules.backend_name(),
            rules = redirects.len(),
            "REDIRECT rules in place"
        );
        Ok(LoadBalancer {
            proxy_task,
            proxy_cancel,
            proxy_listen,
            backends,
            reconciler_task,
            reconciler_cancel,
            health,
            reconciler_status,
            updates,
            rules,
            redirects,
            rules_in_place: true,
            repair: Repair::default(),
            api_port: plan.reconciler.api_port,
        })
    }

    /// Makes the proxy skip the apiserver of a Master this node took over
    /// from because it fell silent (see [`crate::takeover`]), until the
    /// reconciler stops.
    pub(crate) fn follow_takeovers(&self, status: watch::Receiver<DriverStatus>) {
        tokio::spawn(crate::takeover::follow(
            status,
            self.health.clone(),
            self.backends.clone(),
            self.reconciler_cancel.clone(),
        ));
    }

    /// Whether this node can serve through its proxy, and why.
    pub(crate) fn health(&self) -> (bool, String) {
        node_verdict(!self.proxy_task.is_finished(), &self.health.borrow())
    }

    /// Takes the outcome of the last rule check if it has ended and, with
    /// `start`, starts the next (which puts the rules back if someone
    /// removed them). Never waits: the checks run on the blocking pool.
    pub(crate) fn check_rules(&mut self, start: bool) {
        if let Some(outcome) = self.repair.finished() {
            self.rules_in_place = outcome.in_place();
        }
        if start {
            self.repair.start(&self.rules, &self.redirects);
        }
    }

    /// The part that stopped although nobody asked it to: the proxy thread
    /// or the reconciler task (issue 14, finding 8).
    pub(crate) fn dead_component(&self) -> Option<&'static str> {
        if self.proxy_task.is_finished() {
            Some("proxy")
        } else if self.reconciler_task.is_finished() {
            Some("reconciler")
        } else {
            None
        }
    }

    /// Debug builds only (see `run.rs`): stops `proxy` or `reconciler` as
    /// if it had died.
    #[cfg(debug_assertions)]
    pub(crate) fn inject_test_fault(&mut self, what: &str) {
        match what {
            "proxy" => self.proxy_cancel.cancel(),
            "reconciler" => self.reconciler_task.abort(),
            _ => {}
        }
    }

    /// Stops the reconciler (first, so no backend update races the stop).
    pub(crate) async fn stop_reconciler(&mut self) {
        self.reconciler_cancel.cancel();
        if let Err(e) = (&mut self.reconciler_task).await {
            warn!(component = "reconciler", error = %e, "reconciler task failed");
        }
    }

    /// Drains the proxy, then removes the rules; returns what could not be
    /// removed.
    pub(crate) async fn stop(mut self) -> Vec<String> {
        self.proxy_cancel.cancel();
        match (&mut self.proxy_task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(component = "proxy", error = %e, "proxy failed"),
            Err(e) => warn!(component = "proxy", error = %e, "proxy task failed"),
        }
        info!(component = "proxy", "proxy stopped");
        // A check still running could put the rules back after removal.
        self.repair.wait().await;
        let errors: Vec<String> = self
            .rules
            .uninstall(&self.redirects)
            .await
            .iter()
            .map(ToString::to_string)
            .collect();
        if errors.is_empty() {
            info!(component = "netfilter", "REDIRECT rules removed");
        } else {
            for e in &errors {
                error!(component = "netfilter", error = %e, "cannot remove a REDIRECT rule");
            }
        }
        errors
    }
}

/// Runs the reconciler (which loads its kubeconfig itself, retrying) and
/// feeds its backend sets to the proxy.
async fn run_reconciler(
    reconciler: Reconciler,
    backends: BackendsHandle,
    health_tx: watch::Sender<HealthSnapshot>,
    updates: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let mut sets = reconciler.subscribe();
    let mut health = reconciler.subscribe_health();
    let forward = async {
        loop {
            tokio::select! {
                changed = sets.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let set: Vec<SocketAddr> = sets.borrow_and_update().iter().copied().collect();
                    if set.is_empty() {
                        continue;
                    }
                    updates.fetch_add(1, Ordering::Relaxed);
                    info!(component = "proxy", backends = ?set, "backend set updated");
                    backends.set(set);
                }
                changed = health.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    health_tx.send_replace(health.borrow_and_update().clone());
                }
            }
        }
    };
    tokio::select! {
        () = reconciler.run(cancel.clone()) => {}
        () = forward => {}
    }
    health_tx.send_replace(HealthSnapshot::new());
}

/// Set by `cplb run --supervise` in its worker's environment: the number of
/// the proxy's listening socket it holds across the worker's restarts.
pub(crate) const LISTEN_FD_ENV: &str = "CPLB_PROXY_LISTEN_FD";

/// The listening socket handed down by the supervisor, if any.
fn inherited_listener(want: SocketAddr) -> Result<Option<std::net::TcpListener>, RunError> {
    let listener = listener_from_env().map_err(|why| {
        RunError::Proxy(cplb_proxy::ProxyError::Adopt {
            want,
            source: std::io::Error::other(why),
        })
    })?;
    if let Some(listener) = &listener {
        use std::os::fd::AsRawFd;
        info!(
            component = "proxy",
            fd = listener.as_raw_fd(),
            "serving the listening socket held by the supervisor"
        );
    }
    Ok(listener)
}

/// The listening socket named by [`LISTEN_FD_ENV`], if set, taken over by
/// this process. A variable that names anything but an open listening
/// socket is an error (saying why), never taken over: it could be any
/// descriptor of ours.
#[allow(unsafe_code)]
pub(crate) fn listener_from_env() -> Result<Option<std::net::TcpListener>, String> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
    let Some(value) = std::env::var_os(LISTEN_FD_ENV) else {
        return Ok(None);
    };
    let refuse = |why: String| format!("{LISTEN_FD_ENV}={value:?}: {why}");
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| refuse("not a descriptor number above 2".into()))?;
    // Is it open at all? F_GETFD only reads the descriptor's flags.
    nix::fcntl::fcntl(
        // SAFETY: borrowed only for this call, which fails cleanly (EBADF)
        // on a descriptor that is not open.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .map_err(|e| refuse(e.to_string()))?;
    // SAFETY: open (checked above); borrowed for the check only.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let listening = nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::AcceptConn)
        .map_err(|e| refuse(format!("not a socket: {e}")))?;
    if !listening {
        return Err(refuse("not a listening socket".into()));
    }
    // SAFETY: an open listening socket that our parent passed to this
    // process for exactly this use; nothing else here owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Ours now: programs this process starts do not inherit it unless
    // handed it on purpose.
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| refuse(e.to_string()))?;
    Ok(Some(std::net::TcpListener::from(owned)))
}
