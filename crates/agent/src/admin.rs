//! The admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/status`),
//! its client for `cplb status`, and the text `cplb status` prints.
//!
//! Every answer is computed from one [`StatusReport`] snapshot taken when the
//! request arrives: the counters live in the VRRP driver, the proxy and the
//! reconciler, and the lifecycle publishes them as a report (normally on a
//! `watch` channel). `/metrics` therefore encodes through a custom
//! [`Collector`] instead of registering live metric objects.
//!
//! `/metrics` speaks the Prometheus text format 0.0.4
//! (`text/plain; version=0.0.4; charset=utf-8`), encoded by
//! `prometheus-client`'s `prometheus_text` encoder. The families:
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

use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::status::{BackendReport, InstanceReport, StatusReport};

/// Connections served at once; more are closed on accept (the endpoint is
/// for a local scraper and an operator, not for fan-in).
const MAX_CONNECTIONS: usize = 64;
/// A client that has not sent its request headers by then is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may take to finish once `cancel` fires.
const CONNECTION_GRACE: Duration = Duration::from_secs(1);
/// How long `serve` waits for its connections after `cancel`.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Backoff bounds after a failed `accept` (EMFILE and friends).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The largest `/status` document `fetch_status` accepts.
pub const MAX_STATUS_BYTES: usize = 4 << 20;

/// The VRRP states `cplb_vrrp_state` always has a series for.
const VRRP_STATES: [&str; 4] = ["initialize", "backup", "master", "fault"];

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
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(component = "admin", %peer, "too many admin connections, closing");
            continue;
        };
        let admin = Arc::clone(&admin);
        let cancel = cancel.clone();
        tracker.spawn(async move {
            serve_connection(stream, peer, admin, cancel).await;
            drop(slot);
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

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    admin: Arc<Admin>,
    cancel: CancellationToken,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let admin = Arc::clone(&admin);
        async move { Ok::<_, Infallible>(admin.respond(&req)) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);

    let result = tokio::select! {
        result = conn.as_mut() => result,
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
        registry.register_collector(Box::new(ReportCollector(Arc::clone(&source))));
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
fn not_ready_reason(report: &StatusReport) -> Option<&'static str> {
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

// ===== metrics =====

/// Encodes `report` as the `/metrics` document (Prometheus text 0.0.4).
pub fn encode_metrics(report: &StatusReport) -> Result<String, AdminError> {
    let mut registry = Registry::default();
    let source: Arc<dyn StatusSource> = Arc::new(report.clone());
    registry.register_collector(Box::new(ReportCollector(source)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Encodes a fresh report on every scrape.
struct ReportCollector(Arc<dyn StatusSource>);

impl fmt::Debug for ReportCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReportCollector")
    }
}

impl Collector for ReportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        encode_report(&self.0.report(), &mut encoder)
    }
}

type Labels = Vec<(&'static str, String)>;

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels, V)],
) -> fmt::Result {
    family(enc, name, help, MetricType::Gauge, samples, |m, v| {
        m.encode_gauge(v)
    })
}

/// `name` without `_total`: the encoder appends it to counters.
fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> fmt::Result {
    family(enc, name, help, MetricType::Counter, samples, |m, v| {
        m.encode_counter::<NoLabelSet, u64, u64>(v, None)
    })
}

/// One `# HELP`/`# TYPE` block with its series; nothing when there are none.
fn family<V>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: &[(Labels, V)],
    put: impl Fn(&mut MetricEncoder<'_>, &V) -> fmt::Result,
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        let mut series = metric.encode_family(labels)?;
        put(&mut series, value)?;
    }
    Ok(())
}

fn instance_labels(i: &InstanceReport) -> Labels {
    vec![
        ("vrid", i.vrid.to_string()),
        ("interface", i.interface.clone()),
    ]
}

fn backend_labels(b: &BackendReport) -> Labels {
    vec![("backend", b.address.to_string())]
}

fn with(mut labels: Labels, key: &'static str, value: impl Into<String>) -> Labels {
    labels.push((key, value.into()));
    labels
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn encode_report(r: &StatusReport, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
    let none = Labels::new;
    gauge(
        enc,
        "cplb_build_info",
        "Always 1; the version is a label.",
        &[(vec![("version", r.version.clone())], 1i64)],
    )?;
    gauge(
        enc,
        "cplb_ready",
        "1 when the agent is ready and not stopping (as /readyz).",
        &[(none(), flag(not_ready_reason(r).is_none()))],
    )?;
    gauge(
        enc,
        "cplb_uptime_seconds",
        "Seconds since the agent started.",
        &[(none(), r.uptime_seconds)],
    )?;

    // VRRP.
    let states: Vec<(Labels, i64)> = r
        .instances
        .iter()
        .flat_map(|i| {
            // An unexpected state string still gets its series, so the
            // current state always has a 1.
            let extra = (!VRRP_STATES.contains(&i.state.as_str())).then_some(i.state.as_str());
            VRRP_STATES
                .into_iter()
                .chain(extra)
                .map(move |s| (with(instance_labels(i), "state", s), flag(i.state == s)))
        })
        .collect();
    gauge(
        enc,
        "cplb_vrrp_state",
        "1 for the VRRP instance's current state, 0 for the others.",
        &states,
    )?;
    let per_instance = |f: fn(&InstanceReport) -> u64| -> Vec<(Labels, u64)> {
        r.instances
            .iter()
            .map(|i| (instance_labels(i), f(i)))
            .collect()
    };
    gauge(
        enc,
        "cplb_vrrp_priority",
        "The priority the instance advertises now.",
        &per_instance(|i| u64::from(i.priority)),
    )?;
    counter(
        enc,
        "cplb_vrrp_transitions",
        "VRRP state changes.",
        &per_instance(|i| i.transitions),
    )?;
    counter(
        enc,
        "cplb_vrrp_adverts_sent",
        "VRRP adverts sent.",
        &per_instance(|i| i.adverts_sent),
    )?;
    counter(
        enc,
        "cplb_vrrp_adverts_received",
        "VRRP adverts accepted.",
        &per_instance(|i| i.adverts_received),
    )?;
    let dropped: Vec<(Labels, u64)> = r
        .instances
        .iter()
        .flat_map(|i| {
            i.dropped.iter().map(|d| {
                (
                    with(instance_labels(i), "reason", d.reason.clone()),
                    d.count,
                )
            })
        })
        .collect();
    counter(
        enc,
        "cplb_vrrp_packets_dropped",
        "Received VRRP packets dropped, by reason.",
        &dropped,
    )?;

    // Node health.
    let h = &r.health;
    let degraded = h.tracking && h.state != "healthy";
    gauge(
        enc,
        "cplb_node_healthy",
        "1 unless health tracking reports the node degraded.",
        &[(none(), flag(!degraded))],
    )?;
    let effective = if degraded {
        h.degraded_priority
    } else {
        h.base_priority
    };
    gauge(
        enc,
        "cplb_node_effective_priority",
        "The priority the health policy asks for (base, or degraded).",
        &[(none(), i64::from(effective))],
    )?;

    // Proxy backends.
    let backends: &[BackendReport] = r.proxy.as_ref().map_or(&[], |p| &p.backends);
    let per_backend = |f: fn(&BackendReport) -> u64| -> Vec<(Labels, u64)> {
        backends.iter().map(|b| (backend_labels(b), f(b))).collect()
    };
    gauge(
        enc,
        "cplb_backend_up",
        "1 when the backend's last health check passed.",
        &per_backend(|b| u64::from(b.health == "healthy")),
    )?;
    gauge(
        enc,
        "cplb_backend_in_set",
        "1 when the backend is in the proxy's current set.",
        &per_backend(|b| u64::from(b.in_set)),
    )?;
    let check: Vec<(Labels, f64)> = backends
        .iter()
        .filter_map(|b| b.check_seconds.map(|s| (backend_labels(b), s)))
        .collect();
    gauge(
        enc,
        "cplb_backend_health_check_duration_seconds",
        "Duration of the backend's latest health check.",
        &check,
    )?;
    counter(
        enc,
        "cplb_proxy_connections",
        "Connections proxied to the backend.",
        &per_backend(|b| b.connections_total),
    )?;
    gauge(
        enc,
        "cplb_proxy_connections_active",
        "Connections open to the backend now.",
        &per_backend(|b| b.connections_active),
    )?;
    let errors: Vec<(Labels, u64)> = backends
        .iter()
        .flat_map(|b| {
            b.connect_errors
                .iter()
                .map(|e| (with(backend_labels(b), "reason", e.reason.clone()), e.count))
        })
        .collect();
    counter(
        enc,
        "cplb_proxy_connect_errors",
        "Failed connects to the backend, by reason.",
        &errors,
    )?;
    let bytes: Vec<(Labels, u64)> = backends
        .iter()
        .flat_map(|b| {
            [
                (
                    with(backend_labels(b), "direction", "to_backend"),
                    b.bytes_to_backend,
                ),
                (
                    with(backend_labels(b), "direction", "from_backend"),
                    b.bytes_from_backend,
                ),
            ]
        })
        .collect();
    counter(
        enc,
        "cplb_proxy_bytes",
        "Bytes proxied, by direction.",
        &bytes,
    )?;

    if let Some(rec) = &r.reconciler {
        counter(
            enc,
            "cplb_reconciler_updates",
            "Backend set updates published to the proxy.",
            &[(none(), rec.updates)],
        )?;
        counter(
            enc,
            "cplb_reconciler_watch_errors",
            "Endpoint watch errors (the watch restarts after each).",
            &[(none(), rec.watch_errors)],
        )?;
    }
    if let Some(nf) = &r.netfilter {
        gauge(
            enc,
            "cplb_netfilter_rules_in_place",
            "1 when every REDIRECT rule was present at the latest check.",
            &[(none(), flag(nf.in_place))],
        )?;
    }
    Ok(())
}

// ===== client =====

/// Fetches `/status` from the admin endpoint at `addr` (what `cplb status`
/// does). The whole exchange, connect included, is bounded by `timeout`, and
/// the body by [`MAX_STATUS_BYTES`].
pub async fn fetch_status(addr: SocketAddr, timeout: Duration) -> Result<StatusReport, AdminError> {
    let body = tokio::time::timeout(timeout, get(addr, "/status"))
        .await
        .map_err(|_| AdminError::Timeout { addr, timeout })??;
    Ok(serde_json::from_slice(&body)?)
}

async fn get(addr: SocketAddr, path: &'static str) -> Result<Vec<u8>, AdminError> {
    let http = |source| AdminError::Http { addr, source };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| AdminError::Connect { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = Uri::from_static(path);
    let headers = req.headers_mut();
    if let Ok(host) = HeaderValue::try_from(addr.to_string()) {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));

    let exchange = async {
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(http)?.into_data() {
                if buf.len() + data.len() > MAX_STATUS_BYTES {
                    return Err(AdminError::TooLarge {
                        addr,
                        limit: MAX_STATUS_BYTES,
                    });
                }
                buf.extend_from_slice(&data);
            }
        }
        if status != StatusCode::OK {
            let mut text = String::from_utf8_lossy(&buf).trim().to_owned();
            if text.len() > 200 {
                let mut cut = 200;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            return Err(AdminError::Status {
                addr,
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(buf)
    };
    let mut exchange = std::pin::pin!(exchange);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        biased;
        result = exchange.as_mut() => result,
        done = conn.as_mut() => {
            // The connection may finish (server closed) before the body was
            // read out of hyper's buffer; the exchange still completes.
            done.map_err(http)?;
            exchange.await
        }
    }
}

// ===== cplb status =====

/// The text `cplb status` prints: a header, the VRRP instances, node health,
/// the proxy's backends, the reconciler and the netfilter rules. Columns are
/// aligned with spaces; no colours.
pub fn render_status(r: &StatusReport) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_status(&mut out, r);
    out
}

fn write_status(out: &mut String, r: &StatusReport) -> fmt::Result {
    let readiness = if r.stopping {
        "stopping"
    } else if r.ready {
        "ready"
    } else {
        "not ready"
    };
    writeln!(
        out,
        "cplb {}  up {}  {readiness}",
        r.version,
        format_uptime(r.uptime_seconds)
    )?;

    writeln!(out)?;
    if r.instances.is_empty() {
        writeln!(out, "VRRP: no instances")?;
    } else {
        let rows: Vec<Vec<String>> = r
            .instances
            .iter()
            .map(|i| {
                let master = i
                    .master
                    .map_or_else(|| "unknown".to_owned(), |m| m.to_string());
                let vips = if i.vips.is_empty() {
                    "-".to_owned()
                } else {
                    i.vips.join(",")
                };
                vec![
                    format!("VRID {} on {} (VRRPv{}):", i.vrid, i.interface, i.version),
                    i.state.to_uppercase(),
                    format!("priority {}", i.priority),
                    format!("master {master}"),
                    format!("VIPs {vips}"),
                    format!("transitions {}", i.transitions),
                ]
            })
            .collect();
        for (line, i) in align(&rows, &[" "]).lines().zip(&r.instances) {
            writeln!(out, "{line}")?;
            let dropped: u64 = i.dropped.iter().map(|d| d.count).sum();
            write!(
                out,
                "    adverts sent {}  received {}  dropped {dropped}",
                i.adverts_sent, i.adverts_received
            )?;
            if dropped > 0 {
                write!(out, " ({})", breakdown(&i.dropped))?;
            }
            writeln!(out)?;
        }
    }

    writeln!(out)?;
    let h = &r.health;
    if !h.tracking {
        writeln!(
            out,
            "Node health: not tracked  priority {}",
            h.base_priority
        )?;
    } else {
        let state = if h.state.is_empty() {
            "unknown"
        } else {
            &h.state
        };
        write!(out, "Node health: {state}")?;
        if !h.reason.is_empty() {
            write!(out, " ({})", h.reason)?;
        }
        writeln!(
            out,
            "  priority {}, {} while degraded",
            h.base_priority, h.degraded_priority
        )?;
    }

    writeln!(out)?;
    match &r.proxy {
        None => writeln!(out, "Load balancer disabled")?,
        Some(p) => {
            writeln!(out, "Proxy on {}", p.listen)?;
            if p.backends.is_empty() {
                writeln!(out, "  no backends")?;
            } else {
                let mut rows = vec![
                    [
                        "BACKEND",
                        "IN SET",
                        "HEALTH",
                        "LAST CHECK",
                        "ACTIVE",
                        "TOTAL",
                        "CONNECT ERRORS",
                        "LAST ERROR",
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                ];
                rows.extend(p.backends.iter().map(|b| {
                    let errors: u64 = b.connect_errors.iter().map(|e| e.count).sum();
                    let errors = if errors == 0 {
                        "0".to_owned()
                    } else {
                        format!("{errors} ({})", breakdown(&b.connect_errors))
                    };
                    vec![
                        b.address.to_string(),
                        if b.in_set { "yes" } else { "no" }.to_owned(),
                        b.health.clone(),
                        b.check_seconds.map_or_else(|| "-".to_owned(), format_ms),
                        b.connections_active.to_string(),
                        b.connections_total.to_string(),
                        errors,
                        b.last_error.clone().unwrap_or_else(|| "-".to_owned()),
                    ]
                }));
                for line in align(&rows, &[]).lines() {
                    writeln!(out, "  {line}")?;
                }
            }
        }
    }
    match (&r.reconciler, &r.proxy) {
        (Some(rec), _) => writeln!(
            out,
            "Reconciler: {} updates, {} watch errors",
            rec.updates, rec.watch_errors
        )?,
        (None, Some(_)) => writeln!(out, "Reconciler: not running")?,
        (None, None) => {}
    }
    match (&r.netfilter, &r.proxy) {
        (Some(nf), _) => {
            writeln!(
                out,
                "Netfilter ({}): rules in place: {}",
                nf.backend,
                if nf.in_place { "yes" } else { "NO" }
            )?;
            for rule in &nf.rules {
                writeln!(out, "  {rule}")?;
            }
        }
        (None, Some(_)) => writeln!(out, "Netfilter: no rules")?,
        (None, None) => {}
    }
    Ok(())
}

/// `refused 2, timeout 1`.
fn breakdown(counts: &[crate::status::Counted]) -> String {
    counts
        .iter()
        .filter(|c| c.count > 0)
        .map(|c| format!("{} {}", c.reason, c.count))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `45s`, `3m05s`, `2h03m04s`, `5d02h03m`.
fn format_uptime(seconds: f64) -> String {
    // Saturating float-to-int cast: NaN and negatives become 0.
    let s = seconds as u64;
    let (d, h, m, s) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `0.4ms`, `12ms`.
fn format_ms(seconds: f64) -> String {
    let ms = seconds * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

/// Pads every column but the last to its widest cell. `seps[i]` goes between
/// column i and i+1 (two spaces where not given); trailing spaces are cut.
fn align(rows: &[Vec<String>], seps: &[&str]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str(seps.get(c - 1).copied().unwrap_or("  "));
            }
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_formats() {
        assert_eq!(format_uptime(0.0), "0s");
        assert_eq!(format_uptime(59.9), "59s");
        assert_eq!(format_uptime(185.0), "3m05s");
        assert_eq!(format_uptime(3600.0), "1h00m00s");
        assert_eq!(
            format_uptime(2.0 * 86_400.0 + 3.0 * 3600.0 + 4.0 * 60.0 + 5.0),
            "2d03h04m"
        );
        assert_eq!(format_uptime(-5.0), "0s");
        assert_eq!(format_uptime(f64::NAN), "0s");
    }

    #[test]
    fn milliseconds_format() {
        assert_eq!(format_ms(0.0004), "0.4ms");
        assert_eq!(format_ms(0.012), "12ms");
        assert_eq!(format_ms(1.5), "1500ms");
    }

    #[test]
    fn align_pads_all_but_the_last_column() {
        let rows = vec![
            vec!["a".to_owned(), "bbb".to_owned(), "c".to_owned()],
            vec!["aaaa".to_owned(), "b".to_owned(), "".to_owned()],
            vec!["x".to_owned()],
        ];
        assert_eq!(align(&rows, &[" "]), "a    bbb  c\naaaa b\nx\n");
        assert_eq!(align(&[], &[]), "");
    }

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
