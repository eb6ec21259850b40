//! The admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/status`);
//! its metrics encoding is in [`metrics`], the client `cplb status` uses in
//! [`client`], and the text `cplb status` prints in
//! [`crate::status::render`].
//!
//! Every answer is computed from one [`StatusReport`] snapshot taken when the
//! request arrives: the counters live in the VRRP driver, the proxy and the
//! reconciler, and the lifecycle publishes them as a report (normally on a
//! `watch` channel). `/metrics` therefore encodes through a custom
//! [`Collector`] instead of registering live metric objects.
//!
//! `/metrics` speaks the Prometheus text format 0.0.4
//! (`text/plain; version=0.0.4; charset=utf-8`), encoded by
//! `prometheus-client`'s `prometheus_text` encoder. The families (the
//! operator's reference, with labels and help, is `docs/metrics.md`, which a
//! test checks against what `/metrics` serves):
//!
//! - agent: `cplb_build_info{version}`, `cplb_ready`, `cplb_uptime_seconds`
//! - per VRRP instance (`vrid`, `interface`): `cplb_vrrp_state{state}` (1 for
//!   the current state, 0 for initialize/backup/master/fault otherwise),
//!   `cplb_vrrp_priority`, `cplb_vrrp_transitions_total`,
//!   `cplb_vrrp_adverts_sent_total`, `cplb_vrrp_adverts_received_total`,
//!   `cplb_vrrp_packets_dropped_total{reason}`
//! - node: `cplb_node_healthy`, `cplb_node_effective_priority` (the base
//!   priority, or the degraded one while tracking reports degraded)
//! - per proxy backend (`backend` = address): `cplb_backend_up`,
//!   `cplb_backend_in_set`, `cplb_backend_health_check_duration_seconds`
//!   (only once checked), `cplb_proxy_connections_total`,
//!   `cplb_proxy_connections_active`, `cplb_proxy_connect_errors_total{reason}`,
//!   `cplb_proxy_bytes_total{direction="to_backend"|"from_backend"}`
//! - `cplb_reconciler_updates_total`, `cplb_reconciler_watch_errors_total`,
//!   `cplb_netfilter_rules_in_place`
//!
//! With `disableLoadBalancer` the backend, proxy, reconciler and netfilter
//! families are absent.
//!
//! The kubelet's liveness probe calls `/healthz` (static-Pod mode), so no
//! local client may starve the endpoint (issue 14, finding 10): at most
//! [`MAX_CONNECTIONS`] are open, and when a new one comes in while all are
//! taken, the one idle longest (no request for the longest time, or none
//! yet) is closed to make room instead of refusing the newcomer. A client
//! has [`HEADER_READ_TIMEOUT`] to send its request headers (idle keep-alive
//! connections included). Holding connections open therefore cannot keep a
//! probe out: each probe sends its request at once and displaces an idle
//! holder.

mod client;
mod metrics;

pub use crate::status::render::render_status;
pub use client::{MAX_STATUS_BYTES, fetch_status};
pub use metrics::encode_metrics;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::status::StatusReport;

/// Connections open at once (the endpoint is for a local scraper, the
/// kubelet's probes and an operator, not for fan-in); a new one beyond this
/// displaces the one idle longest.
pub const MAX_CONNECTIONS: usize = 64;
/// A client that has not sent its request headers by then is dropped (an
/// idle keep-alive connection too): probes and scrapers send theirs at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one connection may take to finish once `cancel` fires.
const CONNECTION_GRACE: Duration = Duration::from_secs(1);
/// How long `serve` waits for its connections after `cancel`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Backoff bounds after a failed `accept` (EMFILE and friends).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why the admin server or client failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The listener's address could not be read.
    #[error("admin listener: {0}")]
    Listener(#[source] io::Error),
    /// `fetch_status` could not connect.
    #[error("failed to connect to {addr}: {source}")]
    Connect {
        /// Where it tried.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The HTTP exchange failed.
    #[error("http request to {addr} failed: {source}")]
    Http {
        /// The server.
        addr: SocketAddr,
        /// hyper's error.
        source: hyper::Error,
    },
    /// No complete answer within the timeout.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The server.
        addr: SocketAddr,
        /// The time allowed.
        timeout: Duration,
    },
    /// The server answered with something other than 200.
    #[error("{addr} answered {status}: {body}")]
    Status {
        /// The server.
        addr: SocketAddr,
        /// The HTTP status code.
        status: u16,
        /// The start of the body, for the message.
        body: String,
    },
    /// The body exceeds [`MAX_STATUS_BYTES`].
    #[error("the status document from {addr} exceeds {limit} bytes")]
    TooLarge {
        /// The server.
        addr: SocketAddr,
        /// The limit.
        limit: usize,
    },
    /// The body is not a status document.
    #[error("invalid status document: {0}")]
    Decode(#[from] serde_json::Error),
    /// The metrics encoder failed.
    #[error("failed to encode metrics")]
    Encode(#[from] fmt::Error),
}

/// Where the admin endpoint gets the agent's state from.
pub trait StatusSource: Send + Sync + 'static {
    /// The current report (a snapshot; called once per request).
    fn report(&self) -> StatusReport;
}

/// The lifecycle publishes the report on a `watch` channel.
impl StatusSource for watch::Receiver<StatusReport> {
    fn report(&self) -> StatusReport {
        self.borrow().clone()
    }
}

/// A fixed report (tests, one-off encoding).
impl StatusSource for StatusReport {
    fn report(&self) -> StatusReport {
        self.clone()
    }
}

// ===== HTTP server =====

/// Serves the admin endpoint on `listener` until `cancel` fires.
///
/// After `cancel` it stops accepting, lets each open connection finish its
/// request (at most a second; idle keep-alive connections close at once) and
/// returns within about two seconds. Failed accepts are retried with a capped
/// backoff, so the only error is a listener whose address cannot be read.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn StatusSource>,
    cancel: CancellationToken,
) -> Result<(), AdminError> {
    let local = listener.local_addr().map_err(AdminError::Listener)?;
    let admin = Arc::new(Admin::new(source));
    let tracker = TaskTracker::new();
    let open = Arc::new(OpenConnections::default());
    info!(component = "admin", %local, "serving the admin endpoint");

    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => {
                backoff = ACCEPT_BACKOFF_MIN;
                conn
            }
            Err(error) => {
                warn!(component = "admin", %error, ?backoff, "failed to accept a connection");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let (id, evicted) = open.admit(Instant::now());
        let admin = Arc::clone(&admin);
        let cancel = cancel.clone();
        let open = Arc::clone(&open);
        tracker.spawn(async move {
            serve_connection(stream, peer, admin, cancel, evicted, &open, id).await;
            open.remove(id);
        });
    }

    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            component = "admin",
            open = tracker.len(),
            "admin connections still open after the grace period"
        );
    }
    info!(component = "admin", %local, "admin endpoint stopped");
    Ok(())
}

/// The open connections, so that a new one can displace the one idle
/// longest when all [`MAX_CONNECTIONS`] are taken.
#[derive(Debug, Default)]
struct OpenConnections {
    inner: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    /// Per connection: when it last sent a request (or was accepted), and
    /// how to close it.
    by_id: HashMap<u64, (Instant, CancellationToken)>,
}

impl OpenConnections {
    /// Registers a new connection; when all places are taken, closes the
    /// one idle longest first. Returns the new connection's id and the
    /// token that closes it.
    fn admit(&self, now: Instant) -> (u64, CancellationToken) {
        let mut open = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        while open.by_id.len() >= MAX_CONNECTIONS {
            let Some(oldest) = open
                .by_id
                .iter()
                .min_by_key(|(id, (at, _))| (*at, **id))
                .map(|(id, _)| *id)
            else {
                break;
            };
            if let Some((_, close)) = open.by_id.remove(&oldest) {
                debug!(
                    component = "admin",
                    "all admin connections taken; closing the one idle longest"
                );
                close.cancel();
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        let close = CancellationToken::new();
        open.by_id.insert(id, (now, close.clone()));
        (id, close)
    }

    /// Connection `id` sent a request.
    fn touch(&self, id: u64, now: Instant) {
        let mut open = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, _)) = open.by_id.get_mut(&id) {
            *at = now;
        }
    }

    /// Connection `id` has ended.
    fn remove(&self, id: u64) {
        let mut open = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        open.by_id.remove(&id);
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    admin: Arc<Admin>,
    cancel: CancellationToken,
    evicted: CancellationToken,
    open: &Arc<OpenConnections>,
    id: u64,
) {
    let service = {
        let open = Arc::clone(open);
        service_fn(move |req: Request<Incoming>| {
            open.touch(id, Instant::now());
            let admin = Arc::clone(&admin);
            async move { Ok::<_, Infallible>(admin.respond(&req)) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);

    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = evicted.cancelled() => {
            debug!(component = "admin", %peer, "closed to make room for a new connection");
            return;
        }
        () = cancel.cancelled() => {
            // Answer what is in flight, then close instead of keeping alive.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(CONNECTION_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => {
                    debug!(component = "admin", %peer, "dropping a connection at shutdown");
                    return;
                }
            }
        }
    };
    if let Err(error) = result {
        debug!(component = "admin", %peer, %error, "admin connection ended with an error");
    }
}

/// What each connection shares.
struct Admin {
    source: Arc<dyn StatusSource>,
    registry: Registry,
}

impl Admin {
    fn new(source: Arc<dyn StatusSource>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(metrics::ReportCollector(Arc::clone(&source))));
        Admin { source, registry }
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        debug!(component = "admin", method = %req.method(), path, "admin request");
        if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/status") {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if req.method() != Method::GET {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return resp;
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                let report = self.source.report();
                match not_ready_reason(&report) {
                    None => text(StatusCode::OK, "ready\n"),
                    Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
                }
            }
            "/status" => match serde_json::to_vec_pretty(&self.source.report()) {
                Ok(json) => with_type(StatusCode::OK, json, "application/json"),
                Err(error) => {
                    warn!(component = "admin", %error, "failed to encode the status report");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                }
            },
            _ => {
                let mut body = String::with_capacity(8 * 1024);
                match prometheus_client::encoding::prometheus_text::encode(
                    &mut body,
                    &self.registry,
                ) {
                    Ok(()) => with_type(
                        StatusCode::OK,
                        body,
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    ),
                    Err(error) => {
                        warn!(component = "admin", %error, "failed to encode metrics");
                        text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                    }
                }
            }
        }
    }
}

/// `None` when `/readyz` should answer 200, else the short reason for 503.
pub(crate) fn not_ready_reason(report: &StatusReport) -> Option<&'static str> {
    if report.stopping {
        Some("stopping\n")
    } else if !report.ready {
        Some("not ready\n")
    } else {
        None
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, body, "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reason() {
        let mut r = StatusReport::default();
        assert_eq!(not_ready_reason(&r), Some("not ready\n"));
        r.ready = true;
        assert_eq!(not_ready_reason(&r), None);
        r.stopping = true;
        assert_eq!(not_ready_reason(&r), Some("stopping\n"));
    }
}
