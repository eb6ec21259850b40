//! The HTTPS health probe: `GET <path>` presenting the kubeconfig's client
//! certificate and trusting its CA, with a hard timeout over the whole
//! exchange (k0s has none: a blackholed backend stalls its check for ~30 s
//! of dial timeout there).
//!
//! Each backend's checker keeps one [`ProbeSession`]: the HTTP/1.1
//! connection of a successful check carries the next one, so an idle agent
//! does one TLS handshake per backend instead of one per check per backend
//! (a full handshake with a client certificate costs far more CPU than the
//! request). A check that fails or times out closes its connection, so the
//! next one dials afresh; a kept connection the server closed meanwhile is
//! not a failure, the check dials again within the same timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The whole probe took longer than the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// TCP connect failed.
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake failed.
    #[error("tls handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("http request failed: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (bad path).
    #[error("invalid request: {0}")]
    Request(#[from] http::Error),
    /// The server answered with a non-2xx status.
    #[error("unhealthy status {0}")]
    Status(http::StatusCode),
    /// The server closed the connection without answering.
    #[error("connection closed before a response")]
    Closed,
}

/// Probes `https://<ip>:<port><path>`.
#[derive(Clone)]
pub(crate) struct HttpsProbe {
    connector: TlsConnector,
    port: u16,
    path: Arc<str>,
    timeout: Duration,
    /// The kubeconfig's `tls-server-name`, if any; otherwise the backend IP
    /// is verified against the certificate's IP SANs (as client-go does).
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for HttpsProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsProbe")
            .field("port", &self.port)
            .field("path", &self.path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpsProbe {
    pub(crate) fn new(
        mut tls: rustls::ClientConfig,
        port: u16,
        path: &str,
        timeout: Duration,
        server_name: Option<ServerName<'static>>,
    ) -> Self {
        // HTTP/1.1 only. No session resumption: a new connection (first
        // check, or after a failure) is a full handshake, which also proves
        // the backend still holds its key.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        tls.resumption = rustls::client::Resumption::disabled();
        Self {
            connector: TlsConnector::from(Arc::new(tls)),
            port,
            path: Arc::from(path),
            timeout,
            server_name,
        }
    }

    /// The checks of one backend, reusing their connection.
    pub(crate) fn session(&self, ip: IpAddr) -> ProbeSession {
        ProbeSession {
            probe: self.clone(),
            ip,
            open: None,
        }
    }

    /// A new connection: TCP, TLS, HTTP/1.1 handshake; its I/O is driven by
    /// a task that ends with the connection (aborted when dropped).
    async fn dial(&self, ip: IpAddr) -> Result<Open, ProbeError> {
        let addr = SocketAddr::new(ip, self.port);
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(ProbeError::Connect)?;
        // Best effort: a probe is one small request, latency matters more.
        let _ = tcp.set_nodelay(true);
        let server_name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()));
        let tls = self
            .connector
            .connect(server_name, tcp)
            .await
            .map_err(ProbeError::Tls)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let driver = tokio::spawn(async move {
            // Its end (server close, error) shows in the sender.
            let _ = connection.await;
        });
        Ok(Open { sender, driver })
    }

    /// One request on `open`; the body is read to its end so that the
    /// connection can carry the next request.
    async fn request(&self, open: &mut Open, ip: IpAddr) -> Result<(), ProbeError> {
        let addr = SocketAddr::new(ip, self.port);
        let request = Request::get(&*self.path)
            .header(header::HOST, addr.to_string())
            .header(header::USER_AGENT, "cplb-reconciler")
            .header(header::ACCEPT, "*/*")
            .body(Empty::<Bytes>::new())?;
        open.sender.ready().await?;
        let response = open.sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(ProbeError::Status(status))
        }
    }
}

/// An open connection to one backend.
struct Open {
    sender: SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One backend's checks, keeping the connection of the last good one.
pub(crate) struct ProbeSession {
    probe: HttpsProbe,
    ip: IpAddr,
    open: Option<Open>,
}

impl ProbeSession {
    /// One check with the hard timeout applied.
    pub(crate) async fn probe(&mut self) -> Result<(), ProbeError> {
        let timeout = self.probe.timeout;
        let result = tokio::time::timeout(timeout, self.exchange())
            .await
            .unwrap_or(Err(ProbeError::Timeout(timeout)));
        if result.is_err() {
            // Never reuse a connection a check failed or timed out on.
            self.open = None;
        }
        result
    }

    async fn exchange(&mut self) -> Result<(), ProbeError> {
        if let Some(mut open) = self.open.take() {
            match self.probe.request(&mut open, self.ip).await {
                Ok(()) => {
                    self.open = Some(open);
                    return Ok(());
                }
                // Closed by the server since the last check (idle timeout,
                // restart): not the backend's failure, dial again below.
                Err(ProbeError::Http(e)) if stale(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let mut open = self.probe.dial(self.ip).await?;
        self.probe.request(&mut open, self.ip).await?;
        self.open = Some(open);
        Ok(())
    }
}

/// Errors of a kept connection that the server closed before this request.
fn stale(error: &hyper::Error) -> bool {
    error.is_closed() || error.is_canceled() || error.is_incomplete_message()
}
