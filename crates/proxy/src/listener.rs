//! Listening socket and accept loop (shaped like mini-redis `server.rs`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::ProxyError;
use crate::conn;
use crate::shared::Shared;

/// Binds `addr`. An IPv6 wildcard is made dual-stack (like Go's `:6444`,
/// which `netstat` shows as `:::6444`); on a host without IPv6 it falls back
/// to the IPv4 wildcard.
pub(crate) fn bind(
    addr: SocketAddr,
    backlog: u32,
    keepalive: Duration,
) -> Result<(Socket, SocketAddr), ProxyError> {
    match bind_exact(addr, backlog, keepalive) {
        Err(ProxyError::Bind { source, .. })
            if addr.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                && source.raw_os_error() == Some(libc_eafnosupport()) =>
        {
            warn!(
                component = "proxy",
                "ipv6 unavailable, listening on ipv4 only"
            );
            bind_exact(
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port()),
                backlog,
                keepalive,
            )
        }
        other => other,
    }
}

fn libc_eafnosupport() -> i32 {
    nix::errno::Errno::EAFNOSUPPORT as i32
}

fn bind_exact(
    addr: SocketAddr,
    backlog: u32,
    keepalive: Duration,
) -> Result<(Socket, SocketAddr), ProxyError> {
    let err = |source| ProxyError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).map_err(err)?;
    }
    socket.set_reuse_address(true).map_err(err)?;
    // Inherited by every accepted socket.
    socket.set_tcp_nodelay(true).map_err(err)?;
    socket
        .set_tcp_keepalive(&conn::keepalive_params(keepalive))
        .map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket
        .listen(i32::try_from(backlog).unwrap_or(i32::MAX))
        .map_err(err)?;
    let local = socket
        .local_addr()
        .map_err(err)?
        .as_socket()
        .ok_or_else(|| err(std::io::ErrorKind::InvalidInput.into()))?;
    Ok((socket, local))
}

/// Takes over a listening socket made by [`bind`] in another process (a
/// supervisor that keeps it open while the process serving it restarts):
/// checks that it is a listening TCP socket on `want`'s port, makes it
/// non-blocking and close-on-exec. Returns it with its address.
pub(crate) fn adopt(
    listener: std::net::TcpListener,
    want: SocketAddr,
) -> Result<(Socket, SocketAddr), ProxyError> {
    let socket = Socket::from(listener);
    let err = |source| ProxyError::Adopt { want, source };
    let listening = socket.is_listener().map_err(err)?;
    let local = socket
        .local_addr()
        .map_err(err)?
        .as_socket()
        .ok_or_else(|| err(std::io::ErrorKind::InvalidInput.into()))?;
    if !listening || (want.port() != 0 && local.port() != want.port()) {
        return Err(err(std::io::Error::other(format!(
            "inherited socket is {local}, {}",
            if listening {
                "listening"
            } else {
                "not listening"
            }
        ))));
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.set_cloexec(true).map_err(err)?;
    Ok((socket, local))
}

/// Registers the listening socket with the runtime, for readability only.
#[allow(unsafe_code)]
pub(crate) fn register(socket: Socket) -> std::io::Result<Listener> {
    // SAFETY: the `Socket` owns its descriptor and moves into the AsyncFd,
    // so the descriptor stays open, and `as_raw_fd` keeps returning it, for
    // the AsyncFd's whole life (the contract of `register_with_interest`).
    unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// The listening socket. Accepted sockets stay plain sockets until the
/// connection task has read what the client already sent: registering them
/// with the runtime only then spares a readiness event and a read that
/// would find nothing.
pub(crate) type Listener = AsyncFd<Socket>;

/// Accepts one connection: a non-blocking socket and the peer's address.
async fn accept(listener: &Listener) -> std::io::Result<(Socket, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        let accepted = ready.try_io(|listener| {
            listener
                .get_ref()
                .accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
        });
        if let Ok(result) = accepted {
            let (socket, peer) = result?;
            // Always an IP address on a TCP listener.
            let peer = peer
                .as_socket()
                .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
            return Ok((socket, peer));
        }
    }
}

const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) async fn serve(listener: Listener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let clock = tokio::spawn({
        let shared = Arc::clone(&shared);
        async move { shared.connect_clock.run().await }
    });
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // semaphore closed: cannot happen, we never close it
            },
        };
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let Some(source) = shared.admit(peer) else {
                    conn::refuse(stream);
                    continue;
                };
                let shared = Arc::clone(&shared);
                tracker.spawn(async move {
                    conn::handle(shared, stream, peer).await;
                    drop(source);
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the
                // pending connection stays in the backlog.
                error!(component = "proxy", error = %e, retry_in = ?backoff, "failed to accept connection");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
    drop(listener);
    tracker.close();
    let drain = shared.config.drain_timeout;
    info!(
        component = "proxy",
        open = tracker.len(),
        ?drain,
        "stopped accepting, draining connections"
    );
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        info!(
            component = "proxy",
            open = tracker.len(),
            "drain deadline reached, closing remaining connections"
        );
        shared.force_close.cancel();
        tracker.wait().await;
    }
    shared.force_close.cancel();
    clock.abort();
    info!(component = "proxy", "stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client leg relies on Linux copying these options from the
    /// listening socket to accepted sockets.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let idle = Duration::from_secs(42);
        let (socket, addr) = bind("127.0.0.1:0".parse().unwrap(), 16, idle).unwrap();
        let listener = register(socket).unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sock, peer) = accept(&listener).await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(sock.nonblocking().unwrap());
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), idle);
    }
}
