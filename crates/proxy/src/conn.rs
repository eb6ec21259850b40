//! One client connection: connect to a backend (with timeout, trying the
//! next one on failure), then pump bytes until both sides are done.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::copy::{self, End};
use crate::shared::Shared;
use crate::stats::ConnectErrorReason;

fn tune(stream: &TcpStream, keepalive: Duration) {
    // Best effort: a failure here only loses an optimisation.
    let _ = stream.set_nodelay(true);
    let params = TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let _ = SockRef::from(stream).set_tcp_keepalive(&params);
}

async fn connect(shared: &Shared, peer: SocketAddr) -> Option<(TcpStream, SocketAddr)> {
    let timeout = shared.config.connect_timeout;
    for addr in shared.candidates() {
        let reason = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                shared.connect_succeeded(addr);
                return Some((stream, addr));
            }
            Ok(Err(e)) => {
                let reason = ConnectErrorReason::from_io(&e);
                debug!(component = "proxy", %peer, backend = %addr, error = %e, "failed to connect to backend");
                reason
            }
            Err(_) => ConnectErrorReason::Timeout,
        };
        shared.counters(addr).connect_error(reason);
        shared.connect_failed(addr, reason.as_str());
    }
    None
}

pub(crate) async fn handle(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) {
    let Some((backend, addr)) = connect(&shared, peer).await else {
        warn!(component = "proxy", %peer, "no backend reachable, closing client connection");
        return;
    };
    tune(&client, shared.config.keepalive);
    tune(&backend, shared.config.keepalive);
    let removal = shared.removal_token(addr);
    let guard = shared.counters(addr).open();
    let end = copy::pump(
        &client,
        &backend,
        guard.counters(),
        &removal,
        shared.config.idle_timeout,
        shared.config.data_path,
    )
    .await;
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
