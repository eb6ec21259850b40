//! One client connection: connect to a backend (with timeout, trying the
//! next one on failure), then pump bytes until both sides are done.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::copy::{Connection, End, read_early};
use crate::shared::Shared;
use crate::stats::ConnectErrorReason;

/// TCP keepalive on a socket: first probe after `idle` (k0s uses 1 min);
/// probe interval and count stay at the kernel defaults, saving a syscall
/// per connection. The client leg inherits it, with TCP_NODELAY, from the
/// listening socket (Linux copies these options to accepted sockets).
pub(crate) fn keepalive_params(idle: Duration) -> TcpKeepalive {
    TcpKeepalive::new().with_time(idle)
}

/// Connects to `addr`. With `early` bytes from the client (smart connect),
/// the ACK that completes the handshake is delayed so that it rides on
/// them, and they are sent at once: on a nearby backend the handshake has
/// already completed inside connect(2), so that first send both confirms
/// the connection and carries the ACK, with no wait for a writability
/// event and no SO_ERROR query. Returns the stream and how many early bytes
/// went out.
async fn connect_one(
    addr: SocketAddr,
    keepalive: Duration,
    early: Option<&[u8]>,
) -> io::Result<(TcpStream, usize)> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_keepalive(&keepalive_params(keepalive))?;
    if early.is_some() {
        // A socket in delayed-ACK ("pingpong") mode does not ACK the
        // SYN-ACK at once but arms the delayed-ACK timer, so our first data
        // segment carries the ACK (tcp_rcv_synsent_state_process).
        socket.set_tcp_quickack(false)?;
    }
    match socket.connect(&addr.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e),
        _ => {}
    }
    let stream = TcpStream::from_std(socket.into())?;
    if let Some(early) = early {
        // A socket still connecting refuses with EAGAIN; a refused or
        // unreachable one reports its error here.
        match SockRef::from(&stream).send_with_flags(early, libc::MSG_NOSIGNAL) {
            Ok(sent) => return Ok((stream, sent)),
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            Err(_) => {}
        }
    }
    stream.writable().await?;
    match stream.take_error()? {
        Some(e) => Err(e),
        None => Ok((stream, 0)),
    }
}

/// Why no backend could be connected: `local` when the last attempt failed
/// for lack of this host's resources rather than the backend's fault.
struct NoBackend {
    local: bool,
}

type Connected = io::Result<(TcpStream, usize)>;

/// One connect in flight: its backend and its future (bounded by
/// `connect_timeout`).
struct Attempt<'a> {
    addr: SocketAddr,
    connect: Pin<Box<dyn Future<Output = Connected> + Send + 'a>>,
}

/// Waits for the first of `attempts` to finish; returns its index.
async fn first_done(attempts: &mut [Attempt<'_>]) -> (usize, Connected) {
    std::future::poll_fn(|cx| {
        for (i, attempt) in attempts.iter_mut().enumerate() {
            if let Poll::Ready(result) = attempt.connect.as_mut().poll(cx) {
                return Poll::Ready((i, result));
            }
        }
        Poll::Pending
    })
    .await
}

/// Connects to the first backend that accepts, in the order of
/// [`Shared::candidates`]: a failed attempt moves on to the next backend at
/// once, and one that has not finished after `connect_hedge` gets the next
/// backend raced against it (see [`crate::ProxyConfig::connect_hedge`]).
async fn connect(
    shared: &Shared,
    peer: SocketAddr,
    early: Option<&[u8]>,
) -> Result<(TcpStream, SocketAddr, usize), NoBackend> {
    let config = &shared.config;
    let timeout = config.connect_timeout;
    let hedge = config.connect_hedge.filter(|h| *h < timeout);
    let start = |addr: SocketAddr| Attempt {
        addr,
        connect: Box::pin(
            shared
                .connect_clock
                .timeout(timeout, connect_one(addr, config.keepalive, early)),
        ),
    };
    let mut queue = shared.candidates().into_iter();
    let mut attempts: Vec<Attempt<'_>> = queue.next().map(start).into_iter().collect();
    let mut local = false;
    // Bounded: each pass starts an attempt from the finite queue or ends
    // one, and ends the loop once none is left.
    while !attempts.is_empty() {
        let hedge_due = async {
            match hedge {
                Some(delay) if queue.len() > 0 => {
                    let _ = shared
                        .connect_clock
                        .timeout(delay, std::future::pending::<io::Result<()>>())
                        .await;
                }
                _ => std::future::pending().await,
            }
        };
        let (index, result) = tokio::select! {
            biased;
            done = first_done(&mut attempts) => done,
            () = hedge_due => {
                if let Some(addr) = queue.next() {
                    debug!(component = "proxy", %peer, backend = %addr, ?hedge, "connect slow, racing the next backend");
                    attempts.push(start(addr));
                }
                continue;
            }
        };
        let addr = attempts.swap_remove(index).addr;
        match result {
            Ok((stream, sent)) => {
                // The attempts still pending lost the race: each has gone
                // unanswered for at least the hedge delay.
                for lost in attempts.drain(..) {
                    debug!(component = "proxy", %peer, backend = %lost.addr, winner = %addr, "connect overtaken by another backend");
                    shared
                        .counters(lost.addr)
                        .connect_error(ConnectErrorReason::Timeout);
                    shared.connect_failed(lost.addr, "overtaken");
                }
                shared.connect_succeeded(addr);
                return Ok((stream, addr, sent));
            }
            Err(error) => {
                debug!(component = "proxy", %peer, backend = %addr, %error, "failed to connect to backend");
                let reason = ConnectErrorReason::from_io(&error);
                local = !reason.is_backend_fault();
                if local {
                    // Out of descriptors or local ports: the next backend may
                    // still work (ports are per destination), and this one is
                    // not to blame.
                    shared.local_connect_error(addr, &error);
                } else {
                    shared.counters(addr).connect_error(reason);
                    shared.connect_failed(addr, reason.as_str());
                }
                if let Some(next) = queue.next() {
                    attempts.push(start(next));
                }
            }
        }
    }
    Err(NoBackend { local })
}

/// A connected backend, with the client's early bytes not yet sent to it.
struct Started {
    backend: TcpStream,
    addr: SocketAddr,
    early_sent: usize,
    early_rest: Option<Vec<u8>>,
}

/// Reads what the client has already sent, then connects to a backend.
async fn start(shared: &Shared, client: &Socket, peer: SocketAddr) -> Option<Started> {
    // Smart connect only when the client has already spoken (a TLS
    // ClientHello, usually): those bytes then go out first and carry the
    // handshake's ACK. A client still silent may be waiting for a server
    // that speaks first, which must see the connection at once.
    let early = if shared.config.smart_connect {
        match read_early(client) {
            Ok(early) => early,
            Err(e) => {
                debug!(component = "proxy", %peer, error = %e, "client connection failed before connecting to a backend");
                return None;
            }
        }
    } else {
        None
    };
    let (backend, addr, early_sent) = match connect(shared, peer, early.as_deref()).await {
        Ok(connected) => connected,
        Err(NoBackend { local }) => {
            shared.no_backend(peer, local);
            return None;
        }
    };
    let early_rest = early
        .filter(|early| early_sent < early.len())
        .map(|mut early| {
            early.drain(..early_sent);
            early
        });
    Some(Started {
        backend,
        addr,
        early_sent,
        early_rest,
    })
}

/// Refuses a client at once: a reset (zero linger), so that the client
/// fails fast and no TIME_WAIT state stays on this host.
pub(crate) fn refuse(client: Socket) {
    let _ = client.set_linger(Some(Duration::ZERO));
    drop(client);
}

pub(crate) async fn handle(shared: Arc<Shared>, client: Socket, peer: SocketAddr) {
    // Boxed: the connect phase's timer and socket futures (and the early
    // bytes) are freed once connected instead of sizing every idle
    // connection's task.
    let Some(Started {
        backend,
        addr,
        early_sent,
        early_rest,
    }) = Box::pin(start(&shared, &client, peer)).await
    else {
        return;
    };
    let counters = shared.counters(addr);
    counters.add_to_backend(early_sent);
    let client = match TcpStream::from_std(client.into()) {
        Ok(client) => client,
        Err(e) => {
            warn!(component = "proxy", %peer, error = %e, "cannot register client connection");
            return;
        }
    };
    let removal = shared.removal_token(addr);
    let guard = counters.open();
    let connection = Connection::new(
        client,
        backend,
        early_rest,
        guard,
        removal,
        shared.config.idle_timeout,
        shared.config.data_path,
    );
    let end = connection.await;
    match end {
        End::Done | End::IdleTimeout => {
            debug!(component = "proxy", %peer, backend = %addr, ?end, "connection closed");
        }
        End::Closed => {
            debug!(component = "proxy", %peer, backend = %addr, "connection closed by proxy (backend removed or shutdown)");
        }
        End::Error(ref e) => {
            debug!(component = "proxy", %peer, backend = %addr, error = %e, "connection ended with error");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    use crate::backends::BackendSet;
    use crate::copy::Connection;
    use crate::shared::Shared;
    use crate::{DataPath, ProxyConfig};

    /// Each idle connection costs one task holding this future (plus two
    /// socket registrations); the benchmark's KiB-per-connection goal
    /// depends on it staying small (it was 1.8 KiB with a `select!` loop).
    #[tokio::test]
    async fn idle_connection_state_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let shared = Arc::new(Shared::new(
            ProxyConfig::new(vec![addr]),
            BackendSet::new([addr]).unwrap(),
            tokio::runtime::Handle::current(),
        ));
        let connection = Connection::new(
            client,
            accepted,
            None,
            shared.counters(addr).open(),
            CancellationToken::new(),
            None,
            DataPath::Splice,
        );
        assert!(
            size_of_val(&connection) <= 192,
            "connection is {} bytes",
            size_of_val(&connection)
        );
        drop(connection);
        let client = std::net::TcpStream::connect(addr).unwrap();
        let handle = super::handle(Arc::clone(&shared), client.into(), addr);
        assert!(
            size_of_val(&handle) <= 384,
            "connection task future is {} bytes",
            size_of_val(&handle)
        );
    }
}
