//! A client's view of the API: one fresh TCP connection, TLS handshake
//! (verifying the server certificate against the cluster CA, for the address
//! dialled) and an HTTPS GET, from inside a lab host. The server
//! certificate's SHA-256 fingerprint tells the apiservers apart, which is the
//! check k0s's troubleshooting guide does with `openssl s_client`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Connecting, the handshake, or the exchange failed.
    #[error("{stage}: {source}")]
    Io {
        /// What was being done.
        stage: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The client's TLS configuration is unusable.
    #[error("tls client configuration: {0}")]
    Tls(String),
    /// The answer is not HTTP.
    #[error("not an HTTP answer: {0:?}")]
    Http(String),
    /// Entering the host's namespace failed.
    #[error(transparent)]
    Lab(#[from] cplb_e2e::LabError),
}

/// A successful exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// SHA-256 of the server's leaf certificate, `AB:CD:…` as openssl prints it.
    pub fingerprint: String,
}

/// Everything needed to probe an address from one host; cheap to clone and
/// to move to a thread.
#[derive(Clone)]
pub struct Prober {
    netns: String,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    io_timeout: Duration,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("netns", &self.netns)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// A prober in `netns` trusting `ca_pem` and presenting the client
    /// identity (`cert_pem`, `key_pem`), as kubectl with an admin kubeconfig.
    pub fn new(
        netns: &str,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        timeout: Duration,
    ) -> Result<Prober, ProbeError> {
        let tls_err = |e: &dyn std::fmt::Display| ProbeError::Tls(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| tls_err(&e))?)
                .map_err(|e| tls_err(&e))?;
        }
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(&e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls_err(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_err(&e))?;
        Ok(Prober {
            netns: netns.to_owned(),
            tls: Arc::new(config),
            timeout,
            io_timeout: timeout,
        })
    }

    /// The same prober with another timeout for each read and write after
    /// the connect (the benchmark connects within 100 ms, as its VRRP-only
    /// sibling does, but lets a slow handshake finish).
    pub fn with_io_timeout(mut self, io_timeout: Duration) -> Prober {
        self.io_timeout = io_timeout;
        self
    }

    /// `GET path` on `https://addr`, on a new connection, within the
    /// prober's timeout (connect, then each read and write).
    pub fn get(&self, addr: SocketAddr, path: &str) -> Result<Answer, ProbeError> {
        let timeout = self.timeout;
        let tcp = cplb_e2e::in_netns(&self.netns, || TcpStream::connect_timeout(&addr, timeout))?
            .map_err(|source| ProbeError::Io {
            stage: "connect",
            source,
        })?;
        self.exchange(tcp, addr, path)
    }

    /// [`Prober::get`] from the calling thread's network namespace: for a
    /// thread that entered the host's namespace once and probes in a loop
    /// (no thread per probe).
    pub fn get_from_here(&self, addr: SocketAddr, path: &str) -> Result<Answer, ProbeError> {
        let tcp =
            TcpStream::connect_timeout(&addr, self.timeout).map_err(|source| ProbeError::Io {
                stage: "connect",
                source,
            })?;
        self.exchange(tcp, addr, path)
    }

    /// The prober's namespace.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    fn exchange(&self, tcp: TcpStream, addr: SocketAddr, path: &str) -> Result<Answer, ProbeError> {
        let io = |stage| move |source| ProbeError::Io { stage, source };
        tcp.set_read_timeout(Some(self.io_timeout))
            .map_err(io("socket"))?;
        tcp.set_write_timeout(Some(self.io_timeout))
            .map_err(io("socket"))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let conn = rustls::ClientConnection::new(self.tls.clone(), name)
            .map_err(|e| ProbeError::Tls(e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // `Host: ip:port`, IPv6 in brackets (SocketAddr's Display).
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).map_err(io("tls/write"))?;
        // Only the status line is needed; read until it is complete.
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
            let n = tls.read(&mut buf).map_err(io("tls/read"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let fingerprint = tls
            .conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|leaf| fingerprint(leaf.as_ref()))
            .ok_or_else(|| ProbeError::Tls("no server certificate".to_owned()))?;
        let text = String::from_utf8_lossy(&head);
        let line = text.lines().next().unwrap_or_default();
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| line.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| ProbeError::Http(line.to_owned()))?;
        Ok(Answer {
            status,
            fingerprint,
        })
    }
}

/// SHA-256 of `der`, as `openssl x509 -noout -fingerprint -sha256` prints it.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_look_like_openssl() {
        let f = fingerprint(b"abc");
        assert_eq!(f.len(), 32 * 3 - 1);
        assert!(f.starts_with("BA:78:16:BF:8F:01:CF:EA"));
    }
}
