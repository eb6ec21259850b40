//! One apiserver instance: a TLS listener on a given address, serving the
//! shared [`Store`] with Kubernetes semantics, plus fault injection.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::selector::Selector;
use crate::store::{Change, EventType, Kind, Store, WatchStart, age_of};
use crate::{Cluster, Error};

type Body = BoxBody<Bytes, Infallible>;

/// Per-instance options.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Serve `discovery.k8s.io/v1` (EndpointSlices). `false` mimics an old apiserver.
    pub serve_endpoint_slices: bool,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// How long a watch without `timeoutSeconds` stays open.
    pub default_watch_timeout: Duration,
    /// More IP SANs for this listener's certificate, beside its own IP: the
    /// VIP and loopback, as k0s puts them in the apiserver certificate so
    /// clients can verify it through the load balancer.
    pub extra_sans: Vec<IpAddr>,
    /// What the client may do, as RBAC would allow it; `None` allows
    /// everything (the client is cluster-admin). Requests outside it get
    /// `403 Forbidden` and count in [`Counters::forbidden`].
    pub authorization: Option<Authorization>,
}

/// A test's stand-in for the apiserver's RBAC authorizer: what one
/// authenticated client may do. API discovery (`/api`, `/apis…`,
/// `/version`) is always allowed, as Kubernetes' built-in `system:discovery`
/// role allows it to every authenticated user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorization {
    /// Resource requests allowed.
    pub resources: Vec<ResourceRule>,
    /// Non-resource URLs allowed for `get` (e.g. `/readyz`).
    pub non_resource_urls: Vec<String>,
}

/// One allowed (verb, API group, resource, namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRule {
    /// `get`, `list` or `watch`.
    pub verb: String,
    /// The API group (`""` for the core group).
    pub group: String,
    /// The plural resource name.
    pub resource: String,
    /// The namespace (a Role's); `None` for every namespace and
    /// cluster-wide requests (a ClusterRole's).
    pub namespace: Option<String>,
}

impl Authorization {
    /// Whether a `method` request for `path` (with `watch` asked) is allowed.
    fn allows(&self, method: &Method, path: &str, watch: bool) -> bool {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, rest) = match segments.as_slice() {
            ["api"] | ["apis"] | ["version"] | ["api", _] | ["apis", _] | ["apis", _, _] => {
                return method == Method::GET;
            }
            ["api", "v1", rest @ ..] => ("", rest),
            ["apis", group, _, rest @ ..] => (*group, rest),
            _ => {
                return method == Method::GET && self.non_resource_urls.iter().any(|u| u == path);
            }
        };
        let (namespace, resource, name) = match rest {
            ["namespaces", namespace, resource] => (Some(*namespace), *resource, None),
            ["namespaces", namespace, resource, name] => (Some(*namespace), *resource, Some(*name)),
            [resource] => (None, *resource, None),
            [resource, name] => (None, *resource, Some(*name)),
            _ => return false,
        };
        let verb = match (method == Method::GET, watch, name) {
            (false, _, _) => "update",
            (true, true, _) => "watch",
            (true, false, Some(_)) => "get",
            (true, false, None) => "list",
        };
        self.resources.iter().any(|rule| {
            rule.verb == verb
                && rule.group == group
                && rule.resource == resource
                && (rule.namespace.is_none() || rule.namespace.as_deref() == namespace)
        })
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            serve_endpoint_slices: true,
            bookmark_interval: Duration::from_secs(1),
            default_watch_timeout: Duration::from_secs(1800),
            extra_sans: Vec::new(),
            authorization: None,
        }
    }
}

/// An error answer injected for API (non-health) requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFault {
    /// HTTP status, e.g. 429 or 500.
    pub status: u16,
    /// `Retry-After` seconds (also in the Status body's `details.retryAfterSeconds`).
    pub retry_after_secs: u32,
}

/// Fault switches of one instance; all take effect immediately.
#[derive(Debug)]
pub struct Faults {
    fail_readiness: AtomicBool,
    hang: AtomicBool,
    blackhole: AtomicBool,
    close_connections: AtomicBool,
    delay_ms: AtomicU64,
    error: Mutex<Option<ErrorFault>>,
    drop_watches: watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_readiness: AtomicBool::new(false),
            hang: AtomicBool::new(false),
            blackhole: AtomicBool::new(false),
            close_connections: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            error: Mutex::new(None),
            drop_watches: watch::Sender::new(0),
        }
    }
}

impl Faults {
    /// `/readyz` answers 500 (`[-]etcd failed`) while set.
    pub fn set_fail_readiness(&self, fail: bool) {
        self.fail_readiness.store(fail, Ordering::SeqCst);
    }
    /// Requests are accepted (TCP + TLS) but never answered while set.
    pub fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Ordering::SeqCst);
    }
    /// A blackhole while set: new TCP connections are accepted but never
    /// get a TLS handshake, and requests on connections already open are
    /// never answered (as when the host's packets are dropped).
    pub fn set_blackhole(&self, blackhole: bool) {
        self.blackhole.store(blackhole, Ordering::SeqCst);
    }
    /// HTTP/1 answers carry `Connection: close` while set, so the server
    /// closes each connection after one response (as an apiserver going
    /// away, or an idle timeout, closes kept-alive connections).
    pub fn set_close_connections(&self, close: bool) {
        self.close_connections.store(close, Ordering::SeqCst);
    }
    /// Every answer is delayed by this much.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
    /// API requests (not `/healthz`, `/readyz`, `/livez`) get this error while set.
    pub fn set_error(&self, error: Option<ErrorFault>) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }
    /// Ends every open watch stream now (the client sees the stream close).
    pub fn drop_watches(&self) {
        self.drop_watches.send_modify(|generation| *generation += 1);
    }
    fn error(&self) -> Option<ErrorFault> {
        *self.error.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Request counters, so tests can observe what a client did.
#[derive(Debug, Default)]
pub struct Counters {
    /// Successful list requests.
    pub lists: AtomicU64,
    /// Watch requests (opened streams).
    pub watches: AtomicU64,
    /// `/readyz` and `/healthz` requests.
    pub health_checks: AtomicU64,
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Requests refused for lack of a client certificate.
    pub unauthorized: AtomicU64,
    /// Requests refused by [`ServerOptions::authorization`].
    pub forbidden: AtomicU64,
    /// Requests answered with an injected [`ErrorFault`].
    pub injected_errors: AtomicU64,
}

impl Counters {
    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

struct Ctx {
    store: Store,
    addr: SocketAddr,
    options: ServerOptions,
    faults: Arc<Faults>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// A running instance; dropping it stops listening and closes its connections.
pub struct ApiServer {
    addr: SocketAddr,
    faults: Arc<Faults>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    pub(crate) async fn start(
        cluster: &Cluster,
        addr: SocketAddr,
        options: ServerOptions,
    ) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr).await?;
        Self::serve(cluster, listener, options)
    }

    /// Serves on a listener bound by the caller, e.g. inside a network
    /// namespace. Must be called inside a tokio runtime.
    pub(crate) fn serve(
        cluster: &Cluster,
        listener: TcpListener,
        options: ServerOptions,
    ) -> Result<Self, Error> {
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(
            cluster
                .pki()
                .server_config(addr.ip(), &options.extra_sans)?,
        );
        let ctx = Arc::new(Ctx {
            store: cluster.store().clone(),
            addr,
            options,
            faults: Arc::new(Faults::default()),
            counters: Arc::new(Counters::default()),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let server = Self {
            addr,
            faults: ctx.faults.clone(),
            counters: ctx.counters.clone(),
            cancel: ctx.cancel.clone(),
            tracker: ctx.tracker.clone(),
        };
        ctx.tracker
            .spawn(accept_loop(ctx.clone(), listener, acceptor));
        info!(component = "testapi", %addr, "test apiserver listening");
        Ok(server)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://ip:port`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The fault switches.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Request counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Stops listening, closes every connection and waits for all tasks.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        info!(component = "testapi", addr = %self.addr, "test apiserver stopped");
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.tracker.close();
    }
}

async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let accepted = tokio::select! {
            () = ctx.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, _)) => {
                ctx.counters.connections.fetch_add(1, Ordering::SeqCst);
                ctx.tracker
                    .spawn(serve_connection(ctx.clone(), acceptor.clone(), tcp));
            }
            Err(e) => {
                debug!(component = "testapi", error = %e, "accept failed");
                tokio::select! {
                    () = ctx.cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        }
    }
}

async fn serve_connection(ctx: Arc<Ctx>, acceptor: TlsAcceptor, tcp: TcpStream) {
    // As kube-apiserver (Go sets TCP_NODELAY on every connection): without
    // it a response written in two TLS records waits for the client's
    // delayed ACK, ~40 ms.
    let _ = tcp.set_nodelay(true);
    if ctx.faults.blackhole.load(Ordering::SeqCst) {
        // Hold the socket open without ever answering the handshake.
        ctx.cancel.cancelled().await;
        drop(tcp);
        return;
    }
    let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
    let tls = tokio::select! {
        () = ctx.cancel.cancelled() => return,
        tls = handshake => match tls {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                debug!(component = "testapi", error = %e, "tls handshake failed");
                return;
            }
            Err(_) => return,
        },
    };
    let authenticated = tls
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|certs| !certs.is_empty());
    let service_ctx = ctx.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let ctx = service_ctx.clone();
        async move {
            let http1 = req.version() < http::Version::HTTP_2;
            let close = http1 && ctx.faults.close_connections.load(Ordering::SeqCst);
            let mut response = handle(ctx, authenticated, req).await;
            if close {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    tokio::select! {
        () = ctx.cancel.cancelled() => {}
        result = connection => {
            if let Err(e) = result {
                debug!(component = "testapi", error = %e, "connection ended with error");
            }
        }
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(full(text.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_object(code.as_u16(), reason, message))
}

async fn handle(ctx: Arc<Ctx>, authenticated: bool, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    debug!(component = "testapi", addr = %ctx.addr, method = %req.method(), uri = %req.uri(), "request");
    let delay = Duration::from_millis(ctx.faults.delay_ms.load(Ordering::SeqCst));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if ctx.faults.hang.load(Ordering::SeqCst) || ctx.faults.blackhole.load(Ordering::SeqCst) {
        ctx.cancel.cancelled().await;
        return status_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "shutting down",
        );
    }
    if !authenticated {
        ctx.counters.unauthorized.fetch_add(1, Ordering::SeqCst);
        return status_response(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    if let Some(authorization) = &ctx.options.authorization {
        let watch = req.uri().query().is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes())
                .any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
        });
        if !authorization.allows(req.method(), &path, watch) {
            ctx.counters.forbidden.fetch_add(1, Ordering::SeqCst);
            return status_response(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("{} {path} is forbidden for this user", req.method()),
            );
        }
    }
    let is_health = matches!(path.as_str(), "/healthz" | "/readyz" | "/livez");
    if is_health {
        ctx.counters.health_checks.fetch_add(1, Ordering::SeqCst);
        return health(&ctx, &path);
    }
    if let Some(fault) = ctx.faults.error() {
        ctx.counters.injected_errors.fetch_add(1, Ordering::SeqCst);
        return error_fault(fault);
    }
    if req.method() != Method::GET {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the test apiserver is read-only",
        );
    }
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let wants_table = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("as=Table"));
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let slices = ctx.options.serve_endpoint_slices;
    match segments.as_slice() {
        ["version"] => json_response(StatusCode::OK, &version()),
        ["api"] => json_response(StatusCode::OK, &api_versions(ctx.addr)),
        ["apis"] => json_response(StatusCode::OK, &api_groups(slices)),
        ["api", "v1"] => json_response(StatusCode::OK, &core_resources()),
        ["apis", "discovery.k8s.io", "v1"] if slices => {
            json_response(StatusCode::OK, &discovery_resources())
        }
        ["api", "v1", rest @ ..] => resource(&ctx, Kind::Endpoints, rest, &param, wants_table),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] if slices => {
            resource(&ctx, Kind::EndpointSlice, rest, &param, wants_table)
        }
        _ => status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

fn health(ctx: &Ctx, path: &str) -> Response<Body> {
    if path == "/readyz" && ctx.faults.fail_readiness.load(Ordering::SeqCst) {
        return text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed\n",
        );
    }
    text_response(StatusCode::OK, "ok")
}

fn error_fault(fault: ErrorFault) -> Response<Body> {
    let code = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = match code {
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        _ => "InternalError",
    };
    let mut status = status_object(code.as_u16(), reason, "injected fault");
    status["details"] = json!({"retryAfterSeconds": fault.retry_after_secs});
    let mut response = json_response(code, &status);
    if let Ok(v) = HeaderValue::from_str(&fault.retry_after_secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0+cplb-testapi",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn api_versions(addr: SocketAddr) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
    })
}

fn api_groups(slices: bool) -> Value {
    let groups = if slices {
        json!([{
            "name": "discovery.k8s.io",
            "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"},
        }])
    } else {
        json!([])
    };
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

const VERBS: [&str; 3] = ["get", "list", "watch"];

fn core_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [{
            "name": "endpoints",
            "singularName": "endpoints",
            "namespaced": true,
            "kind": "Endpoints",
            "verbs": VERBS,
            "shortNames": ["ep"],
        }],
    })
}

fn discovery_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "discovery.k8s.io/v1",
        "resources": [{
            "name": "endpointslices",
            "singularName": "endpointslice",
            "namespaced": true,
            "kind": "EndpointSlice",
            "verbs": VERBS,
        }],
    })
}

/// Filters applied to list and watch.
struct Filter {
    namespace: Option<String>,
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.matches_labels(object)
            && self.fields.matches_fields(object)
    }
}

fn resource<'a>(
    ctx: &Arc<Ctx>,
    kind: Kind,
    rest: &[&str],
    param: &impl Fn(&str) -> Option<&'a str>,
    wants_table: bool,
) -> Response<Body> {
    let (namespace, name) = match rest {
        [plural] if *plural == kind.plural() => (None, None),
        ["namespaces", ns, plural] if *plural == kind.plural() => (Some(*ns), None),
        ["namespaces", ns, plural, name] if *plural == kind.plural() => (Some(*ns), Some(*name)),
        _ => {
            return status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
    };
    let labels = match Selector::parse_labels(param("labelSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e.0),
    };
    let fields = match Selector::parse_fields(param("fieldSelector").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e.0),
    };
    let filter = Filter {
        namespace: namespace.map(str::to_owned),
        labels,
        fields,
    };
    let watching = param("watch").is_some_and(|w| w == "true" || w == "1");
    if let Some(name) = name {
        if watching {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "use a field selector to watch one object",
            );
        }
        return match ctx.store.get(kind, namespace.unwrap_or("default"), name) {
            Some(object) if wants_table => json_response(
                StatusCode::OK,
                &table(kind, ctx.store.resource_version(), &[object]),
            ),
            Some(object) => json_response(StatusCode::OK, &object),
            None => status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} {:?} not found", kind.plural(), name),
            ),
        };
    }
    if watching {
        return start_watch(ctx, kind, filter, param);
    }
    ctx.counters.lists.fetch_add(1, Ordering::SeqCst);
    let (rv, items) = ctx.store.list(kind, namespace);
    let mut items: Vec<Value> = items.into_iter().filter(|o| filter.matches(o)).collect();
    if wants_table {
        return json_response(StatusCode::OK, &table(kind, rv, &items));
    }
    // Pagination: `limit` + opaque `continue` (an offset here). Like the
    // apiserver's watch cache, `resourceVersion=0` ignores the limit.
    let offset: usize = param("continue")
        .and_then(|c| c.split_once('/'))
        .and_then(|(_, off)| off.parse().ok())
        .unwrap_or(0);
    let limit: Option<usize> = param("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0 && param("resourceVersion") != Some("0"));
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = limit {
        let total = items.len();
        items = items.into_iter().skip(offset).take(limit).collect();
        let next = offset.saturating_add(limit);
        if next < total {
            metadata["continue"] = json!(format!("{rv}/{next}"));
            metadata["remainingItemCount"] = json!(total - next);
        }
    }
    for item in &mut items {
        // Items of a typed list carry no kind/apiVersion, as from a real apiserver.
        if let Some(obj) = item.as_object_mut() {
            obj.remove("kind");
            obj.remove("apiVersion");
        }
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", kind.kind()),
            "apiVersion": kind.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    )
}

fn watch_line(event: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": event, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(kind: Kind, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    watch_line(
        "BOOKMARK",
        &json!({"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": metadata}),
    )
}

fn start_watch<'a>(
    ctx: &Arc<Ctx>,
    kind: Kind,
    filter: Filter,
    param: &impl Fn(&str) -> Option<&'a str>,
) -> Response<Body> {
    ctx.counters.watches.fetch_add(1, Ordering::SeqCst);
    let bookmarks = param("allowWatchBookmarks").is_some_and(|v| v == "true");
    let send_initial = param("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(ctx.options.default_watch_timeout, Duration::from_secs);
    let rv_param = param("resourceVersion").unwrap_or("");

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut initial: Vec<Bytes> = Vec::new();
    let (start_rv, replay, live) = if rv_param.is_empty() || rv_param == "0" || send_initial {
        let (rv, items, live) = ctx
            .store
            .snapshot_and_watch(kind, filter.namespace.as_deref());
        initial.extend(
            items
                .iter()
                .filter(|o| filter.matches(o))
                .map(|o| watch_line("ADDED", o)),
        );
        if send_initial {
            initial.push(bookmark(kind, rv, true));
        }
        (rv, Vec::new(), live)
    } else {
        let Ok(from) = rv_param.parse::<u64>() else {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("invalid resource version: {rv_param}"),
            );
        };
        match ctx.store.watch_from(from) {
            WatchStart::Resume(replay, live) => (from, replay, live),
            WatchStart::Expired { requested, oldest } => {
                // Like a real apiserver: 200 with a single ERROR event, then close.
                let status = status_object(
                    410,
                    "Expired",
                    &format!("too old resource version: {requested} ({oldest})"),
                );
                initial.push(watch_line("ERROR", &status));
                let body = futures::stream::iter(
                    initial
                        .into_iter()
                        .map(|b| Ok::<_, Infallible>(Frame::data(b))),
                );
                return streaming_response(StreamBody::new(body).boxed());
            }
        }
    };
    let watch = Watch {
        kind,
        filter,
        bookmarks,
        timeout,
        last_rv: start_rv,
        drop_watches: ctx.faults.drop_watches.subscribe(),
        bookmark_interval: ctx.options.bookmark_interval,
        cancel: ctx.cancel.clone(),
    };
    ctx.tracker.spawn(watch.run(initial, replay, live, tx));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    streaming_response(StreamBody::new(body).boxed())
}

fn streaming_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

struct Watch {
    kind: Kind,
    filter: Filter,
    bookmarks: bool,
    timeout: Duration,
    last_rv: u64,
    drop_watches: watch::Receiver<u64>,
    bookmark_interval: Duration,
    cancel: CancellationToken,
}

impl Watch {
    /// Translates a store change into the event this watch's client sees,
    /// including selector transitions (an object leaving the selection is DELETED).
    fn translate(&self, change: &Change) -> Option<Bytes> {
        if change.kind != self.kind {
            return None;
        }
        let was = change
            .before
            .as_ref()
            .is_some_and(|b| self.filter.matches(b));
        let is = self.filter.matches(&change.object);
        let event = match (change.event, was, is) {
            (EventType::Added, _, true) => "ADDED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, false) | (EventType::Deleted, true, _) => "DELETED",
            _ => return None,
        };
        Some(watch_line(event, &change.object))
    }

    async fn run(
        mut self,
        initial: Vec<Bytes>,
        replay: Vec<Change>,
        mut live: broadcast::Receiver<Change>,
        tx: mpsc::Sender<Bytes>,
    ) {
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        for change in &replay {
            self.last_rv = self.last_rv.max(change.rv);
            if let Some(line) = self.translate(change)
                && tx.send(line).await.is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(self.bookmark_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            let line = tokio::select! {
                () = self.cancel.cancelled() => return,
                () = &mut deadline => return,
                // The client went away: end now rather than at the next send.
                () = tx.closed() => return,
                changed = self.drop_watches.changed() => {
                    if changed.is_ok() {
                        debug!(component = "testapi", "dropping watch stream (fault)");
                    }
                    return;
                }
                _ = ticker.tick(), if self.bookmarks => Some(bookmark(self.kind, self.last_rv, false)),
                change = live.recv() => match change {
                    Ok(change) => {
                        // Replayed changes may also arrive live; skip duplicates.
                        if change.rv <= self.last_rv {
                            continue;
                        }
                        self.last_rv = change.rv;
                        self.translate(&change)
                    }
                    // Lagged or closed: end the stream; the client re-watches.
                    Err(_) => return,
                },
            };
            if let Some(line) = line
                && tx.send(line).await.is_err()
            {
                return;
            }
        }
    }
}

/// A `meta.k8s.io/v1` Table, what kubectl asks for to print `get` output.
fn table(kind: Kind, rv: u64, items: &[Value]) -> Value {
    let column = |name: &str, format: &str| json!({"name": name, "type": "string", "format": format, "description": name, "priority": 0});
    let (columns, rows): (Vec<Value>, Vec<Value>) = match kind {
        Kind::EndpointSlice => (
            vec![
                column("Name", "name"),
                column("AddressType", ""),
                column("Ports", ""),
                column("Endpoints", ""),
                column("Age", ""),
            ],
            items
                .iter()
                .map(|o| {
                    let ports: Vec<String> = o["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["port"].as_u64().map(|p| p.to_string()))
                        .collect();
                    let addrs: Vec<String> = o["endpoints"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect();
                    row(
                        o,
                        vec![
                            o["metadata"]["name"].clone(),
                            o["addressType"].clone(),
                            json!(ports.join(",")),
                            json!(addrs.join(",")),
                            json!(age_of(o)),
                        ],
                    )
                })
                .collect(),
        ),
        Kind::Endpoints => (
            vec![
                column("Name", "name"),
                column("Endpoints", ""),
                column("Age", ""),
            ],
            items
                .iter()
                .map(|o| {
                    let mut eps = Vec::new();
                    for subset in o["subsets"].as_array().into_iter().flatten() {
                        for addr in subset["addresses"].as_array().into_iter().flatten() {
                            for port in subset["ports"].as_array().into_iter().flatten() {
                                if let (Some(ip), Some(port)) =
                                    (addr["ip"].as_str(), port["port"].as_u64())
                                {
                                    if ip.contains(':') {
                                        eps.push(format!("[{ip}]:{port}"));
                                    } else {
                                        eps.push(format!("{ip}:{port}"));
                                    }
                                }
                            }
                        }
                    }
                    let eps = if eps.is_empty() {
                        "<none>".to_owned()
                    } else {
                        eps.join(",")
                    };
                    row(
                        o,
                        vec![o["metadata"]["name"].clone(), json!(eps), json!(age_of(o))],
                    )
                })
                .collect(),
        ),
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn row(object: &Value, cells: Vec<Value>) -> Value {
    json!({
        "cells": cells,
        "object": {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object["metadata"],
        },
    })
}
