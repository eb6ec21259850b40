//! The HTTPS health probe: one fresh TCP + TLS connection per check,
//! presenting the kubeconfig's client certificate and trusting its CA, with
//! a hard timeout over the whole exchange (k0s has none: a blackholed backend
//! stalls its check for ~30 s of dial timeout there).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
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
        // HTTP/1.1 only; no session resumption so every check is a full handshake.
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

    /// One check with the hard timeout applied.
    pub(crate) async fn probe(&self, ip: IpAddr) -> Result<(), ProbeError> {
        tokio::time::timeout(self.timeout, self.exchange(ip))
            .await
            .map_err(|_| ProbeError::Timeout(self.timeout))?
    }

    async fn exchange(&self, ip: IpAddr) -> Result<(), ProbeError> {
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
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let request = Request::get(&*self.path)
            .header(header::HOST, addr.to_string())
            .header(header::USER_AGENT, "cplb-reconciler")
            .header(header::ACCEPT, "*/*")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request);
        tokio::pin!(connection);
        tokio::pin!(response);
        // The connection future drives the I/O; the response resolves once
        // the status line and headers are in (the body is not needed). With
        // `Connection: close` the connection may finish first, after having
        // handed the response over: then the response future is ready.
        let response = tokio::select! {
            response = &mut response => response?,
            finished = &mut connection => {
                finished?;
                response.await.map_err(|_| ProbeError::Closed)?
            }
        };
        if response.status().is_success() {
            Ok(())
        } else {
            Err(ProbeError::Status(response.status()))
        }
    }
}
