//! The admin endpoint over real loopback sockets: `/metrics` content,
//! `/readyz` following the watch channel, `/status` through `fetch_status`,
//! 404/405, shutdown on cancel, client errors, and `render_status`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cplb::admin::{self, AdminError, StatusSource};
use cplb::status::{
    BackendReport, Counted, ExcludedReport, InstanceReport, KubeconfigReport, NetfilterReport,
    NodeHealthReport, ProxyReport, ReconcilerReport, SocketReport, StatusReport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[path = "support/exposition.rs"]
mod exposition;

const DEADLINE: Duration = Duration::from_secs(5);

fn counted(reason: &str, count: u64) -> Counted {
    Counted {
        reason: reason.to_owned(),
        count,
    }
}

fn backend(addr: &str) -> BackendReport {
    BackendReport {
        address: addr.parse().unwrap(),
        in_set: true,
        health: "healthy".to_owned(),
        check_seconds: None,
        last_error: None,
        connections_total: 0,
        connections_active: 0,
        connect_errors: Vec::new(),
        bytes_to_backend: 0,
        bytes_from_backend: 0,
    }
}

/// Two instances, three backends, every part present.
fn report() -> StatusReport {
    StatusReport {
        version: "0.1.0-test".to_owned(),
        uptime_seconds: 3723.5,
        ready: true,
        stopping: false,
        netlink_overruns: 2,
        instances: vec![
            InstanceReport {
                vrid: 51,
                interface: "eth0".to_owned(),
                version: 2,
                state: "master".to_owned(),
                priority: 200,
                master: Some("192.0.2.11".parse().unwrap()),
                vips: vec!["192.0.2.100/24".to_owned()],
                transitions: 3,
                adverts_sent: 1200,
                adverts_received: 17,
                dropped: vec![counted("ttl", 2), counted("auth", 5)],
            },
            InstanceReport {
                vrid: 52,
                interface: "bond0.100".to_owned(),
                version: 3,
                state: "backup".to_owned(),
                priority: 100,
                master: Some("2001:db8::12".parse().unwrap()),
                vips: vec!["2001:db8::100/64".to_owned(), "2001:db8::101/64".to_owned()],
                transitions: 1,
                adverts_sent: 0,
                adverts_received: 900,
                dropped: Vec::new(),
            },
        ],
        sockets: vec![SocketReport {
            interface: "eth0".to_owned(),
            family: "ipv4".to_owned(),
            mode: "multicast".to_owned(),
            vrids: vec![51],
            packets_received: 1230,
            dropped: vec![counted("bad_ttl", 4), counted("unknown_vrid", 2)],
        }],
        health: NodeHealthReport {
            tracking: true,
            state: "degraded".to_owned(),
            reason: "apiserver /readyz failed 3 times".to_owned(),
            base_priority: 200,
            degraded_priority: 50,
        },
        proxy: Some(ProxyReport {
            listen: "0.0.0.0:6444".parse().unwrap(),
            refused_source_limit: 6,
            no_backend: 1,
            local_connect_errors: 2,
            backends: vec![
                BackendReport {
                    check_seconds: Some(0.012),
                    connections_total: 40,
                    connections_active: 3,
                    bytes_to_backend: 1000,
                    bytes_from_backend: 250_000,
                    ..backend("192.0.2.11:6443")
                },
                BackendReport {
                    check_seconds: Some(0.0004),
                    connections_total: 38,
                    connections_active: 2,
                    ..backend("192.0.2.12:6443")
                },
                BackendReport {
                    in_set: false,
                    health: "unhealthy".to_owned(),
                    last_error: Some("connection refused".to_owned()),
                    connect_errors: vec![counted("refused", 4), counted("timeout", 1)],
                    connections_active: 1,
                    ..backend("192.0.2.13:6443")
                },
            ],
        }),
        reconciler: Some(ReconcilerReport {
            updates: 7,
            watch_errors: 2,
            excluded: vec![ExcludedReport {
                address: "192.0.2.100".parse().unwrap(),
                reason: "configured".to_owned(),
            }],
            excluded_total: 3,
            kubeconfig: KubeconfigReport {
                state: "loaded".to_owned(),
                ..KubeconfigReport::default()
            },
        }),
        netfilter: Some(NetfilterReport {
            backend: "iptables".to_owned(),
            in_place: true,
            rules: vec![
                "-A PREROUTING -d 192.0.2.100/32 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444"
                    .to_owned(),
            ],
        }),
        ipvs: None,
    }
}

/// IPVS mode: no proxy, no rules; one service with two real servers.
fn ipvs_report() -> StatusReport {
    let real_server = |address: &str, weight: u32| cplb::status::RealServerReport {
        address: address.parse().unwrap(),
        weight,
        forward: "DR".to_owned(),
        active_connections: 2,
        inactive_connections: 1,
        health: "healthy".to_owned(),
    };
    StatusReport {
        proxy: None,
        netfilter: None,
        ipvs: Some(cplb::status::IpvsReport {
            dummy_link: "dummyvip0".to_owned(),
            held_vips: vec!["192.0.2.100".parse().unwrap()],
            releasing_vips: Vec::new(),
            sync_daemon: "master".to_owned(),
            services: vec![cplb::status::IpvsServiceReport {
                address: "192.0.2.100:6443".to_owned(),
                scheduler: "rr".to_owned(),
                persistence_seconds: Some(360),
                real_servers: vec![
                    real_server("192.0.2.11:6443", 1),
                    real_server("192.0.2.12:6443", 0),
                ],
            }],
            reconciles: 7,
            changes: 4,
            reconcile_errors: 0,
            last_error: None,
        }),
        ..report()
    }
}

#[test]
fn ipvs_mode_shows_its_services_in_status_and_metrics() {
    let text = admin::render_status(&ipvs_report());
    for needle in [
        "IPVS: VIPs held 192.0.2.100  sync daemon master  1 service(s) on dummyvip0",
        "TCP 192.0.2.100:6443 rr persistence 360s",
        "192.0.2.12:6443  DR       0       2       1         healthy",
    ] {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    assert!(!text.contains("Load balancer disabled"), "{text}");
    let m = admin::encode_metrics(&ipvs_report()).unwrap();
    assert_has(&m, "cplb_ipvs_services 1");
    assert_has(&m, "cplb_ipvs_sync_master 1");
    assert_has(
        &m,
        "cplb_ipvs_real_server_weight{service=\"192.0.2.100:6443\",real_server=\"192.0.2.12:6443\"} 0",
    );
    assert_has(
        &m,
        "cplb_ipvs_real_server_active_connections{service=\"192.0.2.100:6443\",real_server=\"192.0.2.11:6443\"} 2",
    );
    assert_has(&m, "cplb_ipvs_reconciles_total 7");
    // The report round-trips through /status's JSON (what `cplb status` reads).
    let json = serde_json::to_string(&ipvs_report()).unwrap();
    assert_eq!(
        serde_json::from_str::<StatusReport>(&json).unwrap(),
        ipvs_report()
    );
}

fn disabled_report() -> StatusReport {
    StatusReport {
        proxy: None,
        reconciler: None,
        netfilter: None,
        ..report()
    }
}

/// A running server; cancels it on drop so a failing test leaves nothing.
struct Server {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), AdminError>>>,
}

impl Server {
    async fn start(source: Arc<dyn StatusSource>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(admin::serve(listener, source, cancel.clone()));
        Server {
            addr,
            cancel,
            task: Some(task),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A hand-written HTTP/1.1 request, so the test does not trust our client.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(DEADLINE, exchange).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head: head.replace("\r\n", "\n"),
        body: body.to_owned(),
    }
}

fn assert_has(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "missing line {line:?} in:\n{text}"
    );
}

#[tokio::test]
async fn metrics_encode_the_report() {
    let server = Server::start(Arc::new(report())).await;
    let answer = request(server.addr, "GET", "/metrics").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = &answer.body;
    for line in [
        "# TYPE cplb_build_info gauge",
        r#"cplb_build_info{version="0.1.0-test"} 1"#,
        "cplb_ready 1",
        "cplb_uptime_seconds 3723.5",
        "cplb_vrrp_netlink_overruns_total 2",
        "# TYPE cplb_vrrp_state gauge",
        r#"cplb_vrrp_state{vrid="51",interface="eth0",state="master"} 1"#,
        r#"cplb_vrrp_state{vrid="51",interface="eth0",state="backup"} 0"#,
        r#"cplb_vrrp_state{vrid="51",interface="eth0",state="initialize"} 0"#,
        r#"cplb_vrrp_state{vrid="51",interface="eth0",state="fault"} 0"#,
        r#"cplb_vrrp_state{vrid="52",interface="bond0.100",state="backup"} 1"#,
        r#"cplb_vrrp_state{vrid="52",interface="bond0.100",state="master"} 0"#,
        "# TYPE cplb_vrrp_priority gauge",
        r#"cplb_vrrp_priority{vrid="51",interface="eth0"} 200"#,
        "# TYPE cplb_vrrp_transitions_total counter",
        r#"cplb_vrrp_transitions_total{vrid="51",interface="eth0"} 3"#,
        r#"cplb_vrrp_transitions_total{vrid="52",interface="bond0.100"} 1"#,
        "# TYPE cplb_vrrp_adverts_sent_total counter",
        r#"cplb_vrrp_adverts_sent_total{vrid="51",interface="eth0"} 1200"#,
        r#"cplb_vrrp_adverts_received_total{vrid="52",interface="bond0.100"} 900"#,
        "# TYPE cplb_vrrp_packets_dropped_total counter",
        r#"cplb_vrrp_packets_dropped_total{vrid="51",interface="eth0",reason="ttl"} 2"#,
        r#"cplb_vrrp_packets_dropped_total{vrid="51",interface="eth0",reason="auth"} 5"#,
        "# TYPE cplb_vrrp_socket_packets_received_total counter",
        r#"cplb_vrrp_socket_packets_received_total{interface="eth0",family="ipv4",mode="multicast"} 1230"#,
        "# TYPE cplb_vrrp_socket_packets_dropped_total counter",
        r#"cplb_vrrp_socket_packets_dropped_total{interface="eth0",family="ipv4",mode="multicast",reason="bad_ttl"} 4"#,
        r#"cplb_vrrp_socket_packets_dropped_total{interface="eth0",family="ipv4",mode="multicast",reason="unknown_vrid"} 2"#,
        "cplb_node_healthy 0",
        "cplb_node_effective_priority 50",
        "# TYPE cplb_backend_up gauge",
        r#"cplb_backend_up{backend="192.0.2.11:6443"} 1"#,
        r#"cplb_backend_up{backend="192.0.2.13:6443"} 0"#,
        r#"cplb_backend_in_set{backend="192.0.2.13:6443"} 0"#,
        r#"cplb_backend_in_set{backend="192.0.2.12:6443"} 1"#,
        r#"cplb_backend_health_check_duration_seconds{backend="192.0.2.11:6443"} 0.012"#,
        "# TYPE cplb_proxy_connections_total counter",
        r#"cplb_proxy_connections_total{backend="192.0.2.11:6443"} 40"#,
        "# TYPE cplb_proxy_connections_active gauge",
        r#"cplb_proxy_connections_active{backend="192.0.2.12:6443"} 2"#,
        r#"cplb_proxy_connect_errors_total{backend="192.0.2.13:6443",reason="refused"} 4"#,
        r#"cplb_proxy_connect_errors_total{backend="192.0.2.13:6443",reason="timeout"} 1"#,
        r#"cplb_proxy_bytes_total{backend="192.0.2.11:6443",direction="to_backend"} 1000"#,
        r#"cplb_proxy_bytes_total{backend="192.0.2.11:6443",direction="from_backend"} 250000"#,
        "cplb_proxy_refused_source_limit_total 6",
        "cplb_proxy_no_backend_total 1",
        "cplb_proxy_local_connect_errors_total 2",
        "# TYPE cplb_reconciler_updates_total counter",
        "cplb_reconciler_updates_total 7",
        "cplb_reconciler_watch_errors_total 2",
        r#"cplb_reconciler_excluded_address{address="192.0.2.100",reason="configured"} 1"#,
        "cplb_reconciler_exclusions_total 3",
        "cplb_reconciler_kubeconfig_loaded 1",
        "# TYPE cplb_netfilter_rules_in_place gauge",
        "cplb_netfilter_rules_in_place 1",
    ] {
        assert_has(m, line);
    }
    // No check yet: no duration series rather than a made-up 0.
    assert!(
        !m.contains(r#"cplb_backend_health_check_duration_seconds{backend="192.0.2.13:6443"}"#)
    );
    assert!(!m.contains("_total_total"), "{m}");
    // One HELP/TYPE block per family, as Prometheus requires.
    let mut types: Vec<&str> = m.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let n = types.len();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types.len(), n, "{m}");
    // Every sample line is `name{labels} value` with a numeric value.
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample {line:?}");
    }
}

#[tokio::test]
async fn metrics_without_load_balancer() {
    let m = admin::encode_metrics(&disabled_report()).unwrap();
    assert_has(
        &m,
        r#"cplb_vrrp_state{vrid="51",interface="eth0",state="master"} 1"#,
    );
    for absent in [
        "cplb_backend_",
        "cplb_proxy_",
        "cplb_reconciler_",
        "cplb_netfilter_",
    ] {
        assert!(!m.contains(absent), "{absent} in:\n{m}");
    }
}

#[tokio::test]
async fn metrics_keep_an_unexpected_state() {
    let mut r = report();
    r.instances[0].state = "stopped".to_owned();
    let m = admin::encode_metrics(&r).unwrap();
    assert_has(
        &m,
        r#"cplb_vrrp_state{vrid="51",interface="eth0",state="stopped"} 1"#,
    );
    assert_has(
        &m,
        r#"cplb_vrrp_state{vrid="51",interface="eth0",state="master"} 0"#,
    );
}

#[tokio::test]
async fn metrics_escape_label_values() {
    let mut r = report();
    r.instances[0].dropped = vec![counted("bad \"quote\"\nline", 1)];
    let m = admin::encode_metrics(&r).unwrap();
    assert_has(
        &m,
        r#"cplb_vrrp_packets_dropped_total{vrid="51",interface="eth0",reason="bad \"quote\"\nline"} 1"#,
    );
}

#[tokio::test]
async fn readyz_follows_the_watch_channel() {
    let (tx, rx) = watch::channel(StatusReport {
        ready: false,
        ..report()
    });
    let server = Server::start(Arc::new(rx)).await;

    let answer = request(server.addr, "GET", "/readyz").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.body, "not ready\n");
    assert_has(
        &request(server.addr, "GET", "/metrics").await.body,
        "cplb_ready 0",
    );
    // Liveness does not depend on readiness.
    let answer = request(server.addr, "GET", "/healthz").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"));

    tx.send_modify(|r| r.ready = true);
    let answer = request(server.addr, "GET", "/readyz").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ready\n"));
    assert_has(
        &request(server.addr, "GET", "/metrics").await.body,
        "cplb_ready 1",
    );

    tx.send_modify(|r| r.stopping = true);
    let answer = request(server.addr, "GET", "/readyz").await;
    assert_eq!((answer.status, answer.body.as_str()), (503, "stopping\n"));
}

#[tokio::test]
async fn status_round_trips_through_fetch_status() {
    for want in [report(), disabled_report(), StatusReport::default()] {
        let server = Server::start(Arc::new(want.clone())).await;
        let got = admin::fetch_status(server.addr, DEADLINE).await.unwrap();
        assert_eq!(got, want);
    }
    let server = Server::start(Arc::new(report())).await;
    let answer = request(server.addr, "GET", "/status").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    // camelCase on the wire, as documented.
    assert!(answer.body.contains("\"uptimeSeconds\""), "{}", answer.body);
    assert!(answer.body.contains("\"connectErrors\""), "{}", answer.body);
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let server = Server::start(Arc::new(report())).await;
    assert_eq!(request(server.addr, "GET", "/").await.status, 404);
    assert_eq!(request(server.addr, "GET", "/metrics/x").await.status, 404);
    assert_eq!(request(server.addr, "POST", "/nope").await.status, 404);
    for path in ["/metrics", "/healthz", "/readyz", "/status"] {
        let answer = request(server.addr, "POST", path).await;
        assert_eq!(answer.status, 405, "{path}");
        assert_eq!(answer.header("allow"), Some("GET"), "{path}");
    }
    assert_eq!(request(server.addr, "DELETE", "/status").await.status, 405);
    // A query string does not change the route.
    assert_eq!(
        request(server.addr, "GET", "/healthz?verbose").await.status,
        200
    );
}

#[tokio::test]
async fn keep_alive_serves_several_requests() {
    let server = Server::start(Arc::new(report())).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..3 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("ok\n"), "{text}");
    }
}

#[tokio::test]
async fn stops_on_cancel_despite_an_idle_connection() {
    let mut server = Server::start(Arc::new(report())).await;
    // An idle keep-alive connection must not hold the server open.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(DEADLINE, idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    server.cancel.cancel();
    let task = server.task.take().unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("serve returns after cancel")
        .unwrap()
        .unwrap();
    // The idle connection is closed (EOF), and nothing listens any more.
    let n = tokio::time::timeout(DEADLINE, idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(TcpStream::connect(server.addr).await.is_err());
}

/// A one-shot raw server answering `response` to the first connection.
async fn fake_server(response: Vec<u8>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        // Read the request head before answering.
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        let _ = stream.write_all(&response).await;
        let _ = stream.shutdown().await;
    });
    (addr, task)
}

#[tokio::test]
async fn fetch_status_reports_http_errors() {
    let (addr, task) = fake_server(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\nstopping\n".to_vec(),
    )
    .await;
    let err = admin::fetch_status(addr, DEADLINE).await.unwrap_err();
    assert!(
        matches!(&err, AdminError::Status { status: 503, body, .. } if body == "stopping"),
        "{err:?}"
    );
    task.await.unwrap();

    let (addr, task) =
        fake_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec()).await;
    let err = admin::fetch_status(addr, DEADLINE).await.unwrap_err();
    assert!(matches!(err, AdminError::Decode(_)), "{err:?}");
    task.await.unwrap();

    // Chunked and unbounded: the client stops at the limit.
    let mut huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..(admin::MAX_STATUS_BYTES / chunk.len() + 2) {
        huge.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        huge.extend_from_slice(&chunk);
        huge.extend_from_slice(b"\r\n");
    }
    huge.extend_from_slice(b"0\r\n\r\n");
    let (addr, task) = fake_server(huge).await;
    let err = admin::fetch_status(addr, DEADLINE).await.unwrap_err();
    assert!(matches!(err, AdminError::TooLarge { .. }), "{err:?}");
    task.abort();
}

#[tokio::test]
async fn fetch_status_times_out_and_fails_to_connect() {
    // Accepts (the kernel does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let err = admin::fetch_status(addr, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::Timeout { .. }), "{err:?}");
    drop(silent);

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let err = admin::fetch_status(addr, DEADLINE).await.unwrap_err();
    assert!(matches!(err, AdminError::Connect { .. }), "{err:?}");
}

/// Runs of spaces as one, to assert on content regardless of padding.
fn squash(text: &str) -> String {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn render_status_shows_the_key_facts() {
    let text = admin::render_status(&report());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "cplb 0.1.0-test  up 1h02m03s  ready");
    for fact in [
        "VRID 51 on eth0 (VRRPv2):",
        "VRID 52 on bond0.100 (VRRPv3): BACKUP",
        "master 2001:db8::12",
        "VIPs 2001:db8::100/64,2001:db8::101/64",
        "adverts sent 1200  received 17  dropped 7 (ttl 2, auth 5)",
        "Socket eth0 ipv4 multicast (VRID 51): received 1230  dropped 6 (bad_ttl 4, unknown_vrid 2)",
        "Node health: degraded (apiserver /readyz failed 3 times)  priority 200, 50 while degraded",
        "Proxy on 0.0.0.0:6444",
        "  clients refused (per-source limit) 6  without a backend 1  local connect errors 2",
        "connection refused",
        "5 (refused 4, timeout 1)",
        "12ms",
        "0.4ms",
        "Reconciler: kubeconfig loaded, 7 updates, 2 watch errors",
        "  endpoint 192.0.2.100 excluded (configured)",
        "Netfilter (iptables): rules in place: yes",
        "  -A PREROUTING -d 192.0.2.100/32 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444",
    ] {
        assert!(text.contains(fact), "missing {fact:?} in:\n{text}");
    }
    assert!(
        squash(&text).contains(
            "VRID 51 on eth0 (VRRPv2): MASTER priority 200 master 192.0.2.11 VIPs 192.0.2.100/24 transitions 3"
        ),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no colours");
    assert!(
        lines.iter().all(|l| l.trim_end() == *l),
        "trailing spaces:\n{text}"
    );

    // Instance lines: the state column starts at the same offset.
    let vrid: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("VRID"))
        .collect();
    assert_eq!(vrid.len(), 2);
    assert_eq!(vrid[0].find("MASTER"), vrid[1].find("BACKUP"), "{text}");

    // Backend table: every column of every row starts under its header.
    let header = lines.iter().find(|l| l.contains("BACKEND")).unwrap();
    let rows: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.trim_start().starts_with("192.0.2.1"))
        .collect();
    assert_eq!(rows.len(), 3, "{text}");
    let in_set = header.find("IN SET").unwrap();
    let health = header.find("HEALTH").unwrap();
    let last_error = header.find("LAST ERROR").unwrap();
    assert_eq!(&rows[0][in_set..in_set + 3], "yes");
    assert_eq!(&rows[2][in_set..in_set + 2], "no");
    assert_eq!(&rows[2][health..health + 9], "unhealthy");
    assert_eq!(&rows[2][last_error..], "connection refused");
    assert_eq!(&rows[0][last_error..], "-");
}

#[test]
fn render_status_handles_missing_parts() {
    let text = admin::render_status(&disabled_report());
    assert!(text.contains("Load balancer disabled"), "{text}");
    assert!(!text.contains("Reconciler"), "{text}");
    assert!(!text.contains("Netfilter"), "{text}");
    assert!(!text.contains("BACKEND"), "{text}");

    let text = admin::render_status(&StatusReport {
        stopping: true,
        ..StatusReport::default()
    });
    assert!(text.starts_with("cplb   up 0s  stopping\n"), "{text}");
    assert!(text.contains("VRRP: no instances"), "{text}");
    assert!(text.contains("Node health: not tracked"), "{text}");

    let mut r = report();
    r.ready = false;
    r.instances[0].master = None;
    r.instances[0].vips.clear();
    if let Some(nf) = r.netfilter.as_mut() {
        nf.in_place = false;
    }
    if let Some(p) = r.proxy.as_mut() {
        p.backends.clear();
    }
    let text = admin::render_status(&r);
    assert!(
        text.lines().next().unwrap().ends_with("not ready"),
        "{text}"
    );
    assert!(squash(&text).contains("master unknown VIPs -"), "{text}");
    assert!(text.contains("rules in place: NO"), "{text}");
    assert!(text.contains("no backends"), "{text}");

    // A kubeconfig that does not load: the cause, and the metric at 0.
    let mut r = report();
    if let Some(rec) = r.reconciler.as_mut() {
        rec.kubeconfig = KubeconfigReport {
            state: "failed".to_owned(),
            error: Some("failed to load kubeconfig /x.conf: No such file".to_owned()),
            failed_attempts: 4,
        };
    }
    let text = admin::render_status(&r);
    assert!(
        text.contains(
            "Reconciler: kubeconfig NOT loaded (4 attempts: failed to load kubeconfig /x.conf: No such file), 7 updates"
        ),
        "{text}"
    );
    let m = admin::encode_metrics(&r).unwrap();
    assert_has(&m, "cplb_reconciler_kubeconfig_loaded 0");
}

/// `docs/metrics.md` lists exactly what `/metrics` serves: every metric
/// with its type, labels and help, and each series once.
#[tokio::test]
async fn the_metrics_reference_matches_what_metrics_serves() {
    let server = Server::start(Arc::new(report())).await;
    let answer = request(server.addr, "GET", "/metrics").await;
    assert_eq!(answer.status, 200);
    let (mut served, duplicates) = exposition::parse(&answer.body);
    assert!(duplicates.is_empty(), "{duplicates:?}");
    // IPVS mode serves its own families instead of the proxy's.
    let ipvs = Server::start(Arc::new(ipvs_report())).await;
    let answer = request(ipvs.addr, "GET", "/metrics").await;
    assert_eq!(answer.status, 200);
    let (ipvs_served, duplicates) = exposition::parse(&answer.body);
    assert!(duplicates.is_empty(), "{duplicates:?}");
    assert!(
        !ipvs_served.keys().any(|n| n.starts_with("cplb_proxy_")),
        "{ipvs_served:?}"
    );
    served.extend(ipvs_served);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md");
    let documented = exposition::documented(&std::fs::read_to_string(&path).unwrap());
    assert!(served.len() >= 20, "{served:?}");
    for (name, family) in &served {
        assert_eq!(
            documented.get(name),
            Some(family),
            "{name} in docs/metrics.md"
        );
    }
    for name in documented.keys() {
        assert!(
            served.contains_key(name),
            "{name} is documented but not served"
        );
    }
}

/// Issue 14, finding 10: a local process that holds connections open
/// (idle, or sending its headers a little at a time) must not keep the
/// kubelet's liveness probe from `/healthz`, nor `/readyz` from answering.
#[tokio::test]
async fn healthz_answers_while_idle_connections_hold_every_place() {
    let server = Server::start(Arc::new(report())).await;
    let mut holders = Vec::new();
    for i in 0..3 * admin::MAX_CONNECTIONS {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        if i % 2 == 0 {
            // Half a request, the rest never comes.
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHo")
                .await
                .unwrap();
        }
        holders.push(stream);
    }
    for path in ["/healthz", "/readyz", "/healthz"] {
        let answer = request(server.addr, "GET", path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    }
    // A holder that is still open was displaced (closed, EOF) or is still
    // waiting; none got an answer to its half request.
    let mut buf = [0u8; 64];
    let first = holders.first_mut().unwrap();
    let n = tokio::time::timeout(DEADLINE, first.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
}
