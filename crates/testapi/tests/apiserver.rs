//! The test apiserver is real enough: a raw HTTPS client checks the protocol
//! details (auth, list, watch, bookmarks, 410, selectors, faults) and a real
//! `kubectl` reads the store through it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cplb_testapi::{ApiServer, Cluster, Counters, ErrorFault, Kind, ServerOptions};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const DEADLINE: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tls_config(cluster: &Cluster, identity: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cluster.pki().ca_pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

fn admin_tls(cluster: &Cluster) -> Arc<rustls::ClientConfig> {
    tls_config(
        cluster,
        Some((
            cluster.pki().client_cert_pem(),
            cluster.pki().client_key_pem(),
        )),
    )
}

/// Sends one GET on a fresh connection; returns the response with its body unread.
async fn get(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    path: &str,
) -> std::io::Result<http::Response<Incoming>> {
    let tcp = TcpStream::connect(addr).await?;
    let stream = TlsConnector::from(tls)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)
}

async fn get_json(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    path: &str,
) -> (StatusCode, HeaderMap, Value) {
    let response = tokio::time::timeout(DEADLINE, get(tls, addr, path))
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (parts.status, parts.headers, value)
}

/// Reads newline-delimited watch events from a streaming body.
struct Events {
    body: Incoming,
    buf: Vec<u8>,
}

impl Events {
    async fn next(&mut self) -> Option<Value> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=pos).collect();
                    return Some(serde_json::from_slice(&line).unwrap());
                }
                match self.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            self.buf.extend_from_slice(&data);
                        }
                    }
                    _ => return None,
                }
            }
        })
        .await
        .expect("watch event within the deadline")
    }
}

async fn watch(tls: Arc<rustls::ClientConfig>, addr: SocketAddr, path: &str) -> Events {
    let response = get(tls, addr, path).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    Events {
        body: response.into_body(),
        buf: Vec::new(),
    }
}

async fn start(cluster: &Cluster) -> ApiServer {
    cluster.start("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

#[tokio::test]
async fn client_certificate_is_required() {
    let cluster = Cluster::new().unwrap();
    let server = start(&cluster).await;

    let (status, _, body) = get_json(tls_config(&cluster, None), server.addr(), "/readyz").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["reason"], "Unauthorized");
    assert_eq!(Counters::get(&server.counters().unauthorized), 1);

    // A certificate from another CA fails the TLS handshake.
    let (cert, key) = cplb_testapi::Pki::foreign_client_identity().unwrap();
    let foreign = tls_config(&cluster, Some((&cert, &key)));
    let result = tokio::time::timeout(DEADLINE, async {
        let response = get(foreign, server.addr(), "/readyz").await?;
        Ok::<_, std::io::Error>(response.status())
    })
    .await
    .unwrap();
    assert!(result.is_err(), "foreign client cert accepted: {result:?}");

    let (status, _, body) = get_json(admin_tls(&cluster), server.addr(), "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok");
    server.stop().await;
}

#[tokio::test]
async fn list_watch_bookmarks_and_gone() {
    let cluster = Cluster::new().unwrap();
    let server = start(&cluster).await;
    let store = cluster.store();
    store.set_kubernetes_backends(&[ip("192.0.2.1"), ip("192.0.2.2")], 6443);
    // An unrelated slice that the label selector must hide.
    let mut other = cplb_testapi::endpoint_slice("other", &[ip("192.0.2.9")], 80);
    other["metadata"]["labels"]["kubernetes.io/service-name"] = "other".into();
    store.apply(Kind::EndpointSlice, other);

    let tls = admin_tls(&cluster);
    let selector = "labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes";
    let (status, _, list) =
        get_json(tls.clone(), server.addr(), &format!("{SLICES}?{selector}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["kind"], "EndpointSliceList");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["endpoints"][1]["addresses"][0], "192.0.2.2");
    let rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Pagination.
    let (_, _, page) = get_json(tls.clone(), server.addr(), &format!("{SLICES}?limit=1")).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let token = page["metadata"]["continue"].as_str().unwrap().to_owned();
    let (_, _, page2) = get_json(
        tls.clone(),
        server.addr(),
        &format!("{SLICES}?limit=1&continue={}", token.replace('/', "%2F")),
    )
    .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 1);
    assert!(page2["metadata"]["continue"].is_null());

    // Watch from the list's version, with bookmarks.
    let mut events = watch(
        tls.clone(),
        server.addr(),
        &format!("{SLICES}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&{selector}"),
    )
    .await;
    store.set_kubernetes_slice("kubernetes", &[ip("192.0.2.3")], 6443);
    let event = events.next().await.unwrap();
    assert_eq!(event["type"], "MODIFIED");
    assert_eq!(event["object"]["endpoints"][0]["addresses"][0], "192.0.2.3");
    let modified_rv = event["object"]["metadata"]["resourceVersion"].clone();
    // A change to the unrelated slice is filtered out; the next line is a bookmark.
    let mut other = cplb_testapi::endpoint_slice("other", &[ip("192.0.2.8")], 80);
    other["metadata"]["labels"]["kubernetes.io/service-name"] = "other".into();
    store.apply(Kind::EndpointSlice, other);
    let event = events.next().await.unwrap();
    assert_eq!(event["type"], "BOOKMARK", "{event}");
    assert_ne!(event["object"]["metadata"]["resourceVersion"], modified_rv);

    // Dropping watches ends the stream.
    server.faults().drop_watches();
    assert!(events.next().await.is_none());

    // After compaction an old version is gone: one ERROR event with 410.
    store.compact();
    let mut events = watch(
        tls.clone(),
        server.addr(),
        &format!("{SLICES}?watch=true&resourceVersion={rv}"),
    )
    .await;
    let event = events.next().await.unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(event["object"]["code"], 410);
    assert_eq!(event["object"]["reason"], "Expired");
    assert!(events.next().await.is_none());

    // resourceVersion=0: synthetic ADDED for what exists, then live events.
    let mut events = watch(
        tls.clone(),
        server.addr(),
        "/api/v1/namespaces/default/endpoints?watch=true&resourceVersion=0&fieldSelector=metadata.name%3Dkubernetes",
    )
    .await;
    let event = events.next().await.unwrap();
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["kind"], "Endpoints");
    store.delete(Kind::Endpoints, "default", "kubernetes");
    let event = events.next().await.unwrap();
    assert_eq!(event["type"], "DELETED");

    // Unsupported field selectors are rejected like a real apiserver does.
    let (status, _, _) = get_json(
        tls,
        server.addr(),
        &format!("{SLICES}?fieldSelector=spec.x%3Dy"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    server.stop().await;
}

#[tokio::test]
async fn faults_readiness_errors_and_blackhole() {
    let cluster = Cluster::new().unwrap();
    let server = start(&cluster).await;
    let tls = admin_tls(&cluster);

    server.faults().set_fail_readiness(true);
    let (status, _, body) = get_json(tls.clone(), server.addr(), "/readyz").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.as_str().unwrap().contains("readyz check failed"));
    let (status, _, _) = get_json(tls.clone(), server.addr(), "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    server.faults().set_fail_readiness(false);

    server.faults().set_error(Some(ErrorFault {
        status: 429,
        retry_after_secs: 3,
    }));
    let (status, headers, body) = get_json(tls.clone(), server.addr(), SLICES).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "3");
    assert_eq!(body["details"]["retryAfterSeconds"], 3);
    server.faults().set_error(None);
    let (status, _, _) = get_json(tls.clone(), server.addr(), SLICES).await;
    assert_eq!(status, StatusCode::OK);

    // Slow answers: nothing arrives before the delay.
    server.faults().set_delay(Duration::from_secs(3));
    let attempt = tokio::time::timeout(
        Duration::from_millis(300),
        get(tls.clone(), server.addr(), "/readyz"),
    )
    .await;
    assert!(attempt.is_err(), "delayed server answered early");
    server.faults().set_delay(Duration::ZERO);

    // Blackhole: TCP connects, TLS never completes.
    server.faults().set_blackhole(true);
    let attempt = tokio::time::timeout(
        Duration::from_millis(500),
        get(tls.clone(), server.addr(), "/readyz"),
    )
    .await;
    assert!(attempt.is_err(), "blackholed server answered");
    server.faults().set_blackhole(false);

    // Hang: TLS completes, the request is never answered.
    server.faults().set_hang(true);
    let attempt = tokio::time::timeout(
        Duration::from_millis(500),
        get(tls.clone(), server.addr(), "/readyz"),
    )
    .await;
    assert!(attempt.is_err(), "hung server answered");
    server.faults().set_hang(false);

    // Stop listening: connections are refused.
    let addr = server.addr();
    server.stop().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn instances_share_one_store_and_certify_their_ip() {
    let cluster = Cluster::new().unwrap();
    let first = start(&cluster).await;
    let port = first.addr().port();
    let Ok(second) = cluster
        .start_with(
            SocketAddr::new(ip("127.0.0.2"), port),
            ServerOptions {
                serve_endpoint_slices: false,
                ..ServerOptions::default()
            },
        )
        .await
    else {
        panic!("127.0.0.2:{port} must be bindable on Linux loopback");
    };
    // A third one on a listener bound by the caller (as inside a netns).
    let listener = std::net::TcpListener::bind(SocketAddr::new(ip("127.0.0.3"), port)).unwrap();
    let third = cluster.serve(listener, ServerOptions::default()).unwrap();
    cluster
        .store()
        .set_kubernetes_backends(&[ip("192.0.2.7")], 6443);
    let tls = admin_tls(&cluster);
    for server in [&first, &second, &third] {
        let (status, _, ep) = get_json(
            tls.clone(),
            server.addr(),
            "/api/v1/namespaces/default/endpoints/kubernetes",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "192.0.2.7");
    }
    // The second one mimics an apiserver without the EndpointSlice API.
    let (_, _, groups) = get_json(tls.clone(), second.addr(), "/apis").await;
    assert_eq!(groups["groups"].as_array().unwrap().len(), 0);
    let (status, _, _) = get_json(tls, second.addr(), SLICES).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    first.stop().await;
    second.stop().await;
    third.stop().await;
}

/// `kubectl` (1.32 in the image; Debian's `kubernetes-client` elsewhere)
/// discovers the API and prints what the store holds.
#[tokio::test]
async fn kubectl_reads_the_store() {
    if std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: kubectl is not installed (apt-get install kubernetes-client)");
        return;
    }
    let cluster = Cluster::new().unwrap();
    let server = start(&cluster).await;
    cluster.store().set_kubernetes_backends(
        &[ip("192.0.2.11"), ip("192.0.2.12"), ip("2001:db8::11")],
        6443,
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("admin.conf");
    cluster
        .write_kubeconfig(&kubeconfig, server.addr())
        .unwrap();

    let kubectl = |args: &'static [&'static str]| {
        let kubeconfig = kubeconfig.clone();
        let cache = dir.path().join("cache");
        async move {
            let output = tokio::time::timeout(
                Duration::from_secs(60),
                tokio::process::Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .arg("--cache-dir")
                    .arg(&cache)
                    .args(args)
                    .env_remove("KUBECONFIG")
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("kubectl finished")
            .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(
                output.status.success(),
                "kubectl {args:?} failed: {stdout}\n{stderr}"
            );
            stdout
        }
    };

    let readyz = kubectl(&["get", "--raw", "/readyz"]).await;
    assert_eq!(readyz.trim(), "ok");

    let slices = kubectl(&["get", "endpointslices", "-n", "default"]).await;
    eprintln!("{slices}");
    assert!(slices.contains("kubernetes "), "{slices}");
    assert!(slices.contains("192.0.2.11,192.0.2.12"), "{slices}");
    assert!(slices.contains("kubernetes-ipv6"), "{slices}");
    assert!(slices.contains("2001:db8::11"), "{slices}");

    let endpoints = kubectl(&["get", "endpoints", "kubernetes", "-n", "default"]).await;
    eprintln!("{endpoints}");
    assert!(endpoints.contains("192.0.2.11:6443"), "{endpoints}");

    let json = kubectl(&["get", "endpointslices", "-n", "default", "-o", "json"]).await;
    let list: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    server.stop().await;
}
