//! End-to-end tests of the proxy over real TCP on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cplb_proxy::{BackendsHandle, DataPath, Proxy, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait in these tests.
const DEADLINE: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// Test backend: sends `B<id>\n`, echoes everything it receives, and after
/// the client's end-of-file sends the FNV-1a hash of all received bytes
/// (8 bytes, little endian) and closes.
struct EchoBackend {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EchoBackend {
    async fn start(id: u8) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = echo_session(stream, id).await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_session(mut stream: TcpStream, id: u8) -> std::io::Result<()> {
    stream.write_all(&[b'B', b'0' + id, b'\n']).await?;
    let mut hash = FNV_START;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hash = fnv1a(hash, &buf[..n]);
        stream.write_all(&buf[..n]).await?;
    }
    stream.write_all(&hash.to_le_bytes()).await?;
    stream.shutdown().await
}

struct Running {
    addr: SocketAddr,
    handle: BackendsHandle,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

fn config(backends: Vec<SocketAddr>) -> ProxyConfig {
    let mut config = ProxyConfig::new(backends);
    config.listen = "127.0.0.1:0".parse().unwrap();
    // Long windows so that a slow machine cannot expire them mid-test.
    config.passive_health_window = Duration::from_secs(300);
    config.drain_timeout = Duration::from_secs(300);
    config
}

async fn start(config: ProxyConfig) -> Running {
    let proxy = Proxy::bind(config).await.unwrap();
    let addr = proxy.local_addr();
    let handle = proxy.backends_handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(proxy.run(shutdown.clone()));
    Running {
        addr,
        handle,
        shutdown,
        task,
    }
}

async fn read_greeting(stream: &mut TcpStream) -> u8 {
    let mut greeting = [0u8; 3];
    timeout(DEADLINE, stream.read_exact(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(greeting[0], b'B');
    greeting[1] - b'0'
}

/// Sends `data` (writing and reading concurrently), half-closes, and checks
/// the echo and the backend's hash of what it received.
async fn exchange(stream: TcpStream, data: Vec<u8>) -> u8 {
    let (mut rd, mut wr) = stream.into_split();
    let expected_hash = fnv1a(FNV_START, &data);
    let len = data.len();
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
        (data, wr)
    });
    let mut received = Vec::with_capacity(len + 11);
    timeout(DEADLINE, rd.read_to_end(&mut received))
        .await
        .expect("echo timed out")
        .unwrap();
    let (data, _wr) = writer.await.unwrap();
    assert_eq!(received.len(), 3 + len + 8, "greeting + echo + hash");
    assert_eq!(&received[3..3 + len], &data[..], "echoed bytes differ");
    let hash = u64::from_le_bytes(received[3 + len..].try_into().unwrap());
    assert_eq!(hash, expected_hash, "backend received different bytes");
    received[1] - b'0'
}

/// Deterministic pseudo-random payload (xorshift).
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every data path, for tests that must hold on both.
const DATA_PATHS: [DataPath; 2] = [DataPath::Splice, DataPath::Copy];

/// A backend that runs `session` on each of its next `count` connections.
async fn scripted_backend<F, Fut>(count: usize, session: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        for _ in 0..count {
            let (stream, _) = listener.accept().await.unwrap();
            session(stream).await;
        }
    });
    (addr, task)
}

/// A proxy in front of `backend` moving bytes with `path`.
async fn start_with_path(backend: SocketAddr, path: DataPath) -> Running {
    let mut cfg = config(vec![backend]);
    cfg.data_path = path;
    start(cfg).await
}

/// A client with a 4 KiB receive buffer, so the proxy's writes to it stall.
async fn small_window_client(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    timeout(DEADLINE, socket.connect(addr))
        .await
        .unwrap()
        .unwrap()
}

/// Reads until end-of-file or reset; returns the bytes read.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("not closed in time")
        {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn round_robin_across_three_backends() {
    init_tracing();
    let backends = [
        EchoBackend::start(0).await,
        EchoBackend::start(1).await,
        EchoBackend::start(2).await,
    ];
    let proxy = start(config(backends.iter().map(|b| b.addr).collect())).await;
    let mut counts: HashMap<u8, usize> = HashMap::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        *counts.entry(read_greeting(&mut stream).await).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&c| c.abs_diff(100) <= 1), "{counts:?}");
    let total: u64 = proxy
        .handle
        .stats()
        .iter()
        .map(|s| s.connections_total)
        .sum();
    assert_eq!(total, 300);
}

#[tokio::test]
async fn dead_backend_is_skipped_and_client_served() {
    init_tracing();
    let live = [EchoBackend::start(0).await, EchoBackend::start(1).await];
    // A port with nothing listening: bind, learn the port, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = start(config(vec![live[0].addr, live[1].addr, dead])).await;
    for i in 0..30u64 {
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let id = exchange(stream, payload(i, 100)).await;
        assert!(id <= 1);
    }
    let stats = proxy.handle.stats();
    let dead_stats = stats.iter().find(|s| s.addr == dead).unwrap();
    // Refused once, then skipped for the rest of the (long) window.
    assert_eq!(dead_stats.connect_errors_refused, 1, "{dead_stats:?}");
    assert_eq!(dead_stats.connections_total, 0);
    let served: u64 = stats.iter().map(|s| s.connections_total).sum();
    assert_eq!(served, 30);
}

/// A loopback "blackhole": a listener whose accept queue is full and never
/// drained, so the kernel drops further SYNs and connects hang.
fn blackhole() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    blackhole_at("127.0.0.1")
}

/// [`blackhole`] on another loopback address (Linux routes all of
/// 127.0.0.0/8 to `lo`), for tests that tell backends apart by address.
fn blackhole_at(ip: &str) -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&format!("{ip}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue (backlog 0 admits one); the next SYNs are dropped.
    let fillers = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()
        })
        .collect();
    (socket, fillers, addr)
}

#[tokio::test]
async fn connect_timeout_moves_on_to_next_backend() {
    init_tracing();
    let live = EchoBackend::start(9).await;
    let (_hole, _fillers, hole) = blackhole();
    let mut cfg = config(vec![hole, live.addr]);
    cfg.connect_timeout = Duration::from_millis(200);
    let proxy = start(cfg).await;
    for i in 0..4u64 {
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(exchange(stream, payload(i, 10)).await, 9);
    }
    let stats = proxy.handle.stats();
    let hole_stats = stats.iter().find(|s| s.addr == hole).unwrap();
    // Timed out once, then skipped by passive health.
    assert_eq!(hole_stats.connect_errors_timeout, 1, "{hole_stats:?}");
    assert_eq!(stats.iter().map(|s| s.connections_total).sum::<u64>(), 4);
}

/// A backend that leaves SYNs unanswered (a host whose link went down) no
/// longer holds a client for the whole connect timeout: after
/// `connect_hedge` the next backend is raced against it and wins. The
/// timeout here is far beyond the test's guard, so only the hedge can
/// serve the clients in time; whichever backend a client's round-robin
/// turn starts at, it is served by the live one.
#[tokio::test]
async fn unanswered_connect_is_raced_against_the_next_backend() {
    init_tracing();
    let live = EchoBackend::start(5).await;
    let (_hole, _fillers, hole) = blackhole();
    let mut cfg = config(vec![hole, live.addr]);
    cfg.connect_timeout = Duration::from_secs(600);
    cfg.connect_hedge = Some(Duration::from_millis(50));
    let proxy = start(cfg).await;
    for i in 0..2u64 {
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let served = timeout(Duration::from_secs(60), exchange(stream, payload(i, 10)))
            .await
            .expect("client still waiting: the unanswered connect was not raced");
        assert_eq!(served, 5);
    }
    let stats = proxy.handle.stats();
    let hole_stats = stats.iter().find(|s| s.addr == hole).unwrap();
    // Overtaken once (counted as a timeout), then skipped by passive health.
    assert_eq!(hole_stats.connect_errors_timeout, 1, "{hole_stats:?}");
    assert_eq!(hole_stats.connections_total, 0, "{hole_stats:?}");
    assert_eq!(proxy.handle.skipped(), vec![hole]);
}

/// A suspected host is skipped before any connect to it has failed (the
/// agent suspects the Master whose adverts stopped), until cleared.
#[tokio::test]
async fn a_suspected_host_gets_no_connect_until_cleared() {
    init_tracing();
    let live = EchoBackend::start(6).await;
    let (_hole, _fillers, hole) = blackhole_at("127.0.0.2");
    let mut cfg = config(vec![hole, live.addr]);
    // Neither the timeout nor a hedge could serve a client sent to the
    // hole within the guard below.
    cfg.connect_timeout = Duration::from_secs(600);
    cfg.connect_hedge = None;
    let proxy = start(cfg).await;
    assert_eq!(
        proxy
            .handle
            .suspect(hole.ip(), Duration::from_secs(600), "test"),
        vec![hole]
    );
    assert_eq!(proxy.handle.skipped(), vec![hole]);
    for i in 0..4u64 {
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let served = timeout(Duration::from_secs(60), exchange(stream, payload(i, 10)))
            .await
            .expect("a client was sent to the suspected host");
        assert_eq!(served, 6);
    }
    let stats = proxy.handle.stats();
    assert!(
        stats
            .iter()
            .all(|s| s.addr != hole || (s.connections_total == 0 && s.connect_errors_timeout == 0)),
        "{stats:?}"
    );
    assert_eq!(proxy.handle.clear_suspect(hole.ip(), "test"), vec![hole]);
    assert!(proxy.handle.skipped().is_empty());
    // Only the current set's backends at that address are affected.
    assert!(
        proxy
            .handle
            .suspect(
                "127.0.0.3".parse().unwrap(),
                Duration::from_secs(600),
                "test"
            )
            .is_empty()
    );
}

#[tokio::test]
async fn all_backends_dead_closes_client() {
    init_tracing();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = start(config(vec![dead])).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    assert!(read_until_closed(&mut stream).await.is_empty());
}

#[tokio::test]
async fn client_half_close_still_gets_whole_response() {
    init_tracing();
    let backend = EchoBackend::start(4).await;
    for path in DATA_PATHS {
        let proxy = start_with_path(backend.addr, path).await;
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        // 4 MiB: far more than socket buffers, so the echo must keep flowing
        // after the client has shut its write side.
        assert_eq!(exchange(stream, payload(7, 4 << 20)).await, 4);
        let handle = proxy.handle.clone();
        wait_for(|| {
            handle
                .stats()
                .first()
                .is_some_and(|s| s.connections_active == 0)
        })
        .await;
        let stats = proxy.handle.stats();
        assert_eq!(stats[0].bytes_to_backend, 4 << 20);
        assert_eq!(stats[0].bytes_from_backend, (4 << 20) + 11);
    }
}

/// A client with a tiny receive buffer makes the proxy's writes block, so
/// data waits in the pending tail (heap copy or spliced pipe) many times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_gets_every_byte() {
    init_tracing();
    let data = payload(11, 8 << 20);
    let expected = fnv1a(FNV_START, &data);
    let (backend, server) = scripted_backend(DATA_PATHS.len(), move |mut s| {
        let data = data.clone();
        async move {
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
        }
    })
    .await;
    for path in DATA_PATHS {
        let proxy = start_with_path(backend, path).await;
        let mut stream = small_window_client(proxy.addr).await;
        let mut hash = FNV_START;
        let mut total = 0;
        let mut buf = [0u8; 1000];
        loop {
            let n = timeout(DEADLINE, stream.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                break;
            }
            hash = fnv1a(hash, &buf[..n]);
            total += n;
        }
        assert_eq!(total, 8 << 20, "{path:?}");
        assert_eq!(hash, expected, "{path:?}");
    }
    server.await.unwrap();
}

#[tokio::test]
async fn backend_half_close_still_receives_client_data() {
    init_tracing();
    // Backend that answers first, shuts its write side, then reads.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::channel(1);
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"response").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        tx.send(got).await.unwrap();
    });
    let proxy = start(config(vec![backend])).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(read_until_closed(&mut stream).await, b"response");
    stream.write_all(b"late request body").await.unwrap();
    stream.shutdown().await.unwrap();
    let got = timeout(DEADLINE, rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, b"late request body");
    server.await.unwrap();
}

#[tokio::test]
async fn removed_backend_connections_close_after_grace_and_not_before() {
    init_tracing();
    let old = EchoBackend::start(1).await;
    let new = EchoBackend::start(2).await;
    let grace = Duration::from_millis(300);
    let mut cfg = config(vec![old.addr]);
    cfg.removed_backend_grace = Some(grace);
    let proxy = start(cfg).await;

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(read_greeting(&mut stream).await, 1);
    let removed_at = Instant::now();
    assert!(proxy.handle.set(vec![new.addr]));

    // Right after the removal the connection still works.
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    timeout(DEADLINE, stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping");

    // New connections go to the new backend.
    let mut fresh = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(read_greeting(&mut fresh).await, 2);

    // Then the proxy closes it, no earlier than the grace period.
    assert!(read_until_closed(&mut stream).await.is_empty());
    assert!(
        removed_at.elapsed() >= grace,
        "closed before the grace period"
    );

    // The connection to the new backend is untouched.
    fresh.write_all(b"pong").await.unwrap();
    timeout(DEADLINE, fresh.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"pong");
    let handle = proxy.handle.clone();
    let old_addr = old.addr;
    wait_for(|| {
        handle
            .stats()
            .iter()
            .any(|s| s.addr == old_addr && s.connections_active == 0 && !s.in_set)
    })
    .await;
}

#[tokio::test]
async fn readded_backend_keeps_its_connections() {
    init_tracing();
    let a = EchoBackend::start(1).await;
    let b = EchoBackend::start(2).await;
    let mut cfg = config(vec![a.addr]);
    cfg.removed_backend_grace = Some(Duration::from_millis(100));
    let proxy = start(cfg).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(read_greeting(&mut stream).await, 1);
    proxy.handle.set(vec![b.addr]);
    proxy.handle.set(vec![a.addr, b.addr]);
    // Outlive the grace period: the removal timer must find `a` back in the set.
    let start = Instant::now();
    let handle = proxy.handle.clone();
    wait_for(|| start.elapsed() > Duration::from_millis(400) && handle.current().len() == 2).await;
    stream.write_all(b"still").await.unwrap();
    let mut echo = [0u8; 5];
    timeout(DEADLINE, stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"still");
}

#[tokio::test]
async fn empty_update_keeps_previous_set() {
    init_tracing();
    let backend = EchoBackend::start(3).await;
    let proxy = start(config(vec![backend.addr])).await;
    assert!(!proxy.handle.set(Vec::new()));
    assert_eq!(proxy.handle.current(), vec![backend.addr]);
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(exchange(stream, b"hello".to_vec()).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections_keep_data_intact() {
    init_tracing();
    let backends = [
        EchoBackend::start(0).await,
        EchoBackend::start(1).await,
        EchoBackend::start(2).await,
    ];
    let mut cfg = config(backends.iter().map(|b| b.addr).collect());
    // 1,000 connects at once can overflow a backend's SYN queue (a SYN
    // retried after 1 s): a hedge would then land the connection on the
    // next backend, which is right but not the strict rotation checked here.
    cfg.connect_hedge = None;
    let proxy = start(cfg).await;
    let addr = proxy.addr;
    let clients: Vec<_> = (0..1000u64)
        .map(|i| {
            tokio::spawn(async move {
                let stream = timeout(DEADLINE, TcpStream::connect(addr))
                    .await
                    .unwrap()
                    .unwrap();
                // Sizes from 1 byte to ~200 KiB, all different.
                exchange(stream, payload(i, 1 + (i as usize * 211) % (200 * 1024))).await
            })
        })
        .collect();
    let mut per_backend = [0usize; 3];
    for c in clients {
        let id = c.await.unwrap();
        per_backend[usize::from(id)] += 1;
    }
    assert_eq!(per_backend.iter().sum::<usize>(), 1000);
    assert!(
        per_backend.iter().all(|&n| n.abs_diff(333) <= 1),
        "{per_backend:?}"
    );
    let handle = proxy.handle.clone();
    wait_for(|| handle.stats().iter().all(|s| s.connections_active == 0)).await;
    let stats = proxy.handle.stats();
    let sent: u64 = (0..1000u64).map(|i| 1 + (i * 211) % (200 * 1024)).sum();
    assert_eq!(stats.iter().map(|s| s.bytes_to_backend).sum::<u64>(), sent);
    // Echo + 3-byte greeting + 8-byte hash per connection.
    assert_eq!(
        stats.iter().map(|s| s.bytes_from_backend).sum::<u64>(),
        sent + 11 * 1000
    );
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drains() {
    init_tracing();
    let backend = EchoBackend::start(5).await;
    let mut proxy = start(config(vec![backend.addr])).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(read_greeting(&mut stream).await, 5);

    proxy.shutdown.cancel();
    // The listener is closed: new connections are refused.
    let addr = proxy.addr;
    let mut refused = false;
    let start = Instant::now();
    while !refused && start.elapsed() < DEADLINE {
        refused = TcpStream::connect(addr).await.is_err();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "still accepting after shutdown");

    // The existing connection keeps working while draining.
    stream.write_all(b"drain").await.unwrap();
    let mut echo = [0u8; 5];
    timeout(DEADLINE, stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"drain");
    assert!(!proxy.task.is_finished());

    // Once the client finishes, run() returns well before the drain deadline.
    stream.shutdown().await.unwrap();
    read_until_closed(&mut stream).await;
    timeout(DEADLINE, &mut proxy.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_closes_connections_at_drain_deadline() {
    init_tracing();
    let backend = EchoBackend::start(6).await;
    let mut cfg = config(vec![backend.addr]);
    cfg.drain_timeout = Duration::from_millis(200);
    let mut proxy = start(cfg).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(read_greeting(&mut stream).await, 6);
    let stopped_at = Instant::now();
    proxy.shutdown.cancel();
    assert!(read_until_closed(&mut stream).await.is_empty());
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(200),
        "closed before the drain deadline"
    );
    timeout(DEADLINE, &mut proxy.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn idle_timeout_closes_quiet_connections() {
    init_tracing();
    let backend = EchoBackend::start(7).await;
    let mut cfg = config(vec![backend.addr]);
    let idle = Duration::from_millis(200);
    cfg.idle_timeout = Some(idle);
    let proxy = start(cfg).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let opened = Instant::now();
    assert_eq!(read_greeting(&mut stream).await, 7);
    assert!(read_until_closed(&mut stream).await.is_empty());
    assert!(opened.elapsed() >= idle);
    drop(proxy);
}

#[tokio::test]
async fn wildcard_listener_is_dual_stack() {
    init_tracing();
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping: no IPv6 loopback");
        return;
    }
    let backend = EchoBackend::start(8).await;
    let mut cfg = config(vec![backend.addr]);
    cfg.listen = "[::]:0".parse().unwrap();
    let proxy = start(cfg).await;
    let port = proxy.addr.port();
    for client in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let mut stream = TcpStream::connect(&client).await.unwrap();
        assert_eq!(read_greeting(&mut stream).await, 8, "via {client}");
    }
}

/// Smart connect (the default) is used only when the client has spoken
/// before the backend connect: a client-first exchange is served, and so
/// is a silent client of a server that speaks first, whatever the timing.
#[tokio::test]
async fn smart_connect_serves_both_protocol_orders() {
    init_tracing();
    let backend = EchoBackend::start(3).await;
    for smart_connect in [true, false] {
        let mut cfg = config(vec![backend.addr]);
        cfg.smart_connect = smart_connect;
        let proxy = start(cfg).await;
        // Client first: the echo exchange writes at once.
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(exchange(stream, payload(5, 100_000)).await, 3);
        // Server first: wait for the greeting without sending anything.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(read_greeting(&mut stream).await, 3);
    }
}

/// A backend whose response and FIN arrive in one segment (the common end
/// of an apiserver request; the backend sends with MSG_MORE, then shuts
/// down): the proxy reads both in one go and passes them on together, and
/// must still deliver every byte, then end-of-file, to a client with a
/// small receive window, on both data paths.
#[tokio::test]
async fn response_with_fin_reaches_a_slow_client_whole() {
    init_tracing();
    let data = payload(21, 48 * 1024);
    let (len, expected) = (data.len(), fnv1a(FNV_START, &data));
    let (backend, server) = scripted_backend(DATA_PATHS.len(), move |mut s| {
        let data = data.clone();
        async move {
            let mut request = [0u8; 4];
            s.read_exact(&mut request).await.unwrap();
            // MSG_MORE holds the data back so shutdown's FIN joins it.
            let mut sent = 0;
            while sent < data.len() {
                s.writable().await.unwrap();
                let rest = &data[sent..];
                match s.try_io(tokio::io::Interest::WRITABLE, || {
                    socket2::SockRef::from(&s).send_with_flags(rest, libc::MSG_MORE)
                }) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("send: {e}"),
                }
            }
            s.shutdown().await.unwrap();
        }
    })
    .await;
    for path in DATA_PATHS {
        let proxy = start_with_path(backend, path).await;
        let mut stream = small_window_client(proxy.addr).await;
        stream.write_all(b"GET\n").await.unwrap();
        let mut got = Vec::new();
        timeout(DEADLINE, stream.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), len, "{path:?}");
        assert_eq!(fnv1a(FNV_START, &got), expected, "{path:?}");
    }
    server.await.unwrap();
}

/// The agent's way to run the proxy: on a thread of its own, steered from
/// the caller's runtime.
#[tokio::test]
async fn proxy_thread_serves_takes_updates_and_drains() {
    init_tracing();
    let (one, two) = (EchoBackend::start(1).await, EchoBackend::start(2).await);
    let shutdown = CancellationToken::new();
    let proxy = cplb_proxy::ProxyThread::spawn(config(vec![one.addr]), shutdown.clone())
        .await
        .unwrap();
    let addr = proxy.local_addr();
    let stream = TcpStream::connect(addr).await.unwrap();
    assert_eq!(exchange(stream, payload(1, 10_000)).await, 1);
    assert!(proxy.backends_handle().set(vec![two.addr]));
    let stream = TcpStream::connect(addr).await.unwrap();
    assert_eq!(exchange(stream, payload(2, 10_000)).await, 2);
    shutdown.cancel();
    timeout(DEADLINE, proxy.join()).await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn proxy_thread_reports_bind_errors() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(vec![taken.local_addr().unwrap()]);
    cfg.listen = taken.local_addr().unwrap();
    let err = cplb_proxy::ProxyThread::spawn(cfg, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, cplb_proxy::ProxyError::Bind { .. }),
        "{err:?}"
    );
}

/// A backend that resets the connection right after its response (an
/// abortive close): the client still gets the whole response before the
/// connection ends, on both data paths.
#[tokio::test]
async fn response_followed_by_reset_is_still_delivered() {
    init_tracing();
    let response = payload(31, 2000);
    let expected = response.clone();
    let (backend, server) = scripted_backend(DATA_PATHS.len(), move |mut s| {
        let response = response.clone();
        async move {
            let mut request = [0u8; 4];
            s.read_exact(&mut request).await.unwrap();
            s.write_all(&response).await.unwrap();
            // SO_LINGER 0: close sends RST instead of FIN.
            s.set_zero_linger().unwrap();
            drop(s);
        }
    })
    .await;
    for path in DATA_PATHS {
        let proxy = start_with_path(backend, path).await;
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(b"GET\n").await.unwrap();
        assert_eq!(read_until_closed(&mut stream).await, expected, "{path:?}");
    }
    server.await.unwrap();
}

/// A client connected to `addr` from the loopback address `source`.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    timeout(DEADLINE, socket.connect(addr))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn per_source_limit_refuses_the_excess_and_serves_other_sources() {
    init_tracing();
    let backend = EchoBackend::start(1).await;
    let mut cfg = config(vec![backend.addr]);
    cfg.max_connections_per_source = 3;
    let proxy = start(cfg).await;

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from("127.0.0.2", proxy.addr).await;
        assert_eq!(read_greeting(&mut stream).await, 1);
        held.push(stream);
    }
    // The fourth from the same source is closed at once, unserved.
    let mut excess = connect_from("127.0.0.2", proxy.addr).await;
    assert!(read_until_closed(&mut excess).await.is_empty());
    wait_for(|| proxy.handle.proxy_stats().refused_source_limit == 1).await;

    // Another source is still served meanwhile.
    let mut other = connect_from("127.0.0.3", proxy.addr).await;
    assert_eq!(read_greeting(&mut other).await, 1);
    let stats = proxy.handle.proxy_stats();
    assert_eq!(stats.sources_active, 2, "{stats:?}");
    assert_eq!(stats.connections_active, 4, "{stats:?}");

    // A connection of the full source ends: it is served again.
    drop(held.pop());
    wait_for(|| proxy.handle.proxy_stats().connections_active == 3).await;
    let mut again = connect_from("127.0.0.2", proxy.addr).await;
    assert_eq!(read_greeting(&mut again).await, 1);

    let stats = proxy.handle.proxy_stats();
    assert_eq!(stats.refused_source_limit, 1, "{stats:?}");
    assert_eq!(stats.accepted, 6, "{stats:?}");
    assert_eq!(stats.no_backend, 0, "{stats:?}");
    // The refusal is not the backend's business.
    assert_eq!(proxy.handle.stats()[0].connect_errors_total(), 0);
}

/// Set in the child process that [`local_fd_exhaustion_is_not_a_backend_failure`]
/// starts, so that lowering its descriptor limit affects no other test.
const FD_CHILD_ENV: &str = "CPLB_PROXY_TEST_FD_CHILD";

/// With the descriptor limit reached, the proxy can accept a client but not
/// open a socket to any backend (EMFILE): that is reported as local, and
/// neither backend is blamed or skipped afterwards. A real RLIMIT_NOFILE in
/// a child process (the limit is per process).
#[test]
fn local_fd_exhaustion_is_not_a_backend_failure() {
    if std::env::var_os(FD_CHILD_ENV).is_some() {
        fd_exhaustion_child();
        return;
    }
    let name = "local_fd_exhaustion_is_not_a_backend_failure";
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(FD_CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the child did not run the test:\n{stdout}\n{stderr}"
    );
}

fn fd_exhaustion_child() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    init_tracing();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let one = EchoBackend::start(1).await;
        let two = EchoBackend::start(2).await;
        let proxy = start(config(vec![one.addr, two.addr])).await;
        // One connection served end to end first, and held: every task
        // (the proxy's accept loop, both backends) has been polled and has
        // opened what it opens lazily, and no descriptor of this connection
        // is closed late while the limit below is being measured.
        let mut warm = TcpStream::connect(proxy.addr).await.unwrap();
        read_greeting(&mut warm).await;

        // Only descriptor numbers below the limit can be allocated: set it
        // two above the highest one open, fill every hole and those two,
        // then free two fillers: one for the client, one for the proxy's
        // accept. (With the limit just above the highest, a table with no
        // hole left a single filler to free: the flake CI hit.)
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let highest = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, highest + 3, hard).unwrap();
        let mut fillers = Vec::new();
        for _ in 0..highest + 3 {
            match std::fs::File::open("/dev/null") {
                Ok(file) => fillers.push(file),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("unexpected error filling descriptors: {e}"),
            }
        }
        assert!(
            std::fs::File::open("/dev/null").is_err(),
            "limit not reached"
        );
        assert!(fillers.len() >= 2, "only {} fillers", fillers.len());
        fillers.truncate(fillers.len() - 2);

        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let unserved = read_until_closed(&mut client).await;
        drop(client);
        drop(fillers);
        drop(warm);
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
        assert!(unserved.is_empty());

        let stats = proxy.handle.proxy_stats();
        assert_eq!(stats.no_backend, 1, "{stats:?}");
        assert_eq!(stats.local_connect_errors, 2, "both tried: {stats:?}");
        assert_eq!(
            proxy.handle.skipped(),
            Vec::<SocketAddr>::new(),
            "a local failure put a backend in the skip window"
        );
        for backend in proxy.handle.stats() {
            assert_eq!(backend.connect_errors_total(), 0, "{backend:?}");
        }
        // Both backends serve again, in turn.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
            seen.insert(read_greeting(&mut stream).await);
        }
        assert_eq!(seen, [1, 2].into());
    });
}

/// A listening socket made by `listen` (a supervisor's) queues clients
/// before any proxy serves it; the proxy that adopts it later serves them.
#[tokio::test]
async fn an_adopted_listener_serves_the_clients_that_queued_before_it() {
    init_tracing();
    let backend = EchoBackend::start(4).await;
    let cfg = config(vec![backend.addr]);
    let held = cplb_proxy::listen(&cfg).unwrap();
    let addr = held.local_addr().unwrap();
    // Connected while nothing serves the socket: the kernel completes the
    // handshake into the backlog.
    let mut early = TcpStream::connect(addr).await.unwrap();
    let inherited = held.try_clone().unwrap();
    let mut want = cfg.clone();
    want.listen = addr;
    let proxy = Proxy::adopt(want, inherited).await.unwrap();
    assert_eq!(proxy.local_addr(), addr);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(proxy.run(shutdown.clone()));
    assert_eq!(read_greeting(&mut early).await, 4);
    let mut late = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_greeting(&mut late).await, 4);
    drop((early, late));
    shutdown.cancel();
    task.await.unwrap();
}

/// A socket that is not listening, or listens on another port than the
/// configured one, is refused.
#[tokio::test]
async fn adopting_a_socket_that_does_not_fit_is_an_error() {
    init_tracing();
    let mut cfg = config(vec!["127.0.0.1:9".parse().unwrap()]);
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    cfg.listen = "127.0.0.1:1".parse().unwrap();
    let err = Proxy::adopt(cfg.clone(), other).await.unwrap_err();
    assert!(matches!(err, cplb_proxy::ProxyError::Adopt { .. }), "{err}");

    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    cfg.listen = socket.local_addr().unwrap().as_socket().unwrap();
    let err = Proxy::adopt(cfg, socket.into()).await.unwrap_err();
    assert!(err.to_string().contains("inherited"), "{err}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("not listening"), "{source}");
}
