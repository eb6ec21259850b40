//! One client connection: connect to a backend (with timeout, trying the
//! next one on failure), then pump bytes until both sides are done.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};
use tracing::{debug, warn};

use crate::copy::{Connection, End};
use crate::shared::Shared;
use crate::stats::ConnectErrorReason;

/// TCP keepalive on a socket: first probe after `idle` (k0s uses 1 min);
/// probe interval and count stay at the kernel defaults, saving a syscall
/// per connection. The client leg inherits it, with TCP_NODELAY, from the
/// listening socket (Linux copies these options to accepted sockets).
pub(crate) fn keepalive_params(idle: Duration) -> TcpKeepalive {
    TcpKeepalive::new().with_time(idle)
}

async fn connect_one(
    addr: SocketAddr,
    keepalive: Duration,
    smart_connect: bool,
) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    let sock = SockRef::from(&socket);
    sock.set_tcp_keepalive(&keepalive_params(keepalive))?;
    if smart_connect {
        // A socket in delayed-ACK ("pingpong") mode does not ACK the
        // SYN-ACK at once but arms the delayed-ACK timer, and our first
        // data segment carries the ACK (tcp_rcv_synsent_state_process).
        sock.set_tcp_quickack(false)?;
    }
    socket.connect(addr).await
}

async fn connect(shared: &Shared, peer: SocketAddr) -> Option<(TcpStream, SocketAddr)> {
    let timeout = shared.config.connect_timeout;
    for addr in shared.candidates() {
        let attempt = connect_one(addr, shared.config.keepalive, shared.config.smart_connect);
        let reason = match shared.connect_clock.timeout(timeout, attempt).await {
            Ok(stream) => {
                shared.connect_succeeded(addr);
                return Some((stream, addr));
            }
            Err(e) => {
                debug!(component = "proxy", %peer, backend = %addr, error = %e, "failed to connect to backend");
                ConnectErrorReason::from_io(&e)
            }
        };
        shared.counters(addr).connect_error(reason);
        shared.connect_failed(addr, reason.as_str());
    }
    None
}

pub(crate) async fn handle(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) {
    // Boxed: the connect phase's timer and socket futures are freed once
    // connected instead of sizing every idle connection's task.
    let Some((backend, addr)) = Box::pin(connect(&shared, peer)).await else {
        warn!(component = "proxy", %peer, "no backend reachable, closing client connection");
        return;
    };
    let removal = shared.removal_token(addr);
    let guard = shared.counters(addr).open();
    let connection = Connection::new(
        client,
        backend,
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
        let client = TcpStream::connect(addr).await.unwrap();
        let handle = super::handle(Arc::clone(&shared), client, addr);
        assert!(
            size_of_val(&handle) <= 384,
            "connection task future is {} bytes",
            size_of_val(&handle)
        );
    }
}
