//! A small, faithful-enough kube-apiserver for tests.
//!
//! What it serves (everything the reconciler and `kubectl get` touch):
//! - HTTPS (HTTP/1.1 and h2) with a generated CA; each listener's certificate
//!   carries its IP as a SAN; client-certificate authentication is required
//!   (no certificate → `401 Unauthorized`, a foreign one → handshake refused).
//! - `/healthz`, `/readyz`, `/livez`, `/version`, legacy discovery (`/api`,
//!   `/apis`, `/api/v1`, `/apis/discovery.k8s.io/v1`).
//! - get, list and watch of `v1 Endpoints` and `discovery.k8s.io/v1
//!   EndpointSlices`: global resourceVersions, `watch=true` JSON event
//!   streams, bookmarks, `sendInitialEvents`, `410 Gone` for compacted
//!   versions, label and field selectors, `limit`/`continue`, `Table` output.
//!
//! Several [`ApiServer`]s started from one [`Cluster`] share its [`Store`], as
//! apiservers share etcd. Each has its own [`Faults`] switches. An instance
//! can listen on any loopback address (127.0.0.2, .3 … need no setup on
//! Linux) or, through [`Cluster::serve`], on a socket bound inside a network
//! namespace.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

mod netns;
mod pki;
mod selector;
mod server;
mod store;

pub use netns::{bind_in_netns, connect_in_netns};
pub use pki::Pki;
pub use server::{
    ApiServer, Authorization, Counters, ErrorFault, Faults, ResourceRule, ServerOptions,
};
pub use store::{Change, EventType, Kind, Store, endpoint_slice, endpoints};

/// Errors from setting up the test apiserver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    /// TLS configuration failed.
    #[error("tls configuration failed: {0}")]
    Tls(String),
    /// Binding or file I/O failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Self {
        Error::Tls(e.to_string())
    }
}

/// A cluster: one PKI and one store shared by all its apiserver instances.
#[derive(Debug, Clone)]
pub struct Cluster {
    pki: Arc<Pki>,
    store: Store,
}

impl Cluster {
    /// A new cluster with a fresh CA and an empty store.
    pub fn new() -> Result<Self, Error> {
        Ok(Self {
            pki: Arc::new(Pki::generate()?),
            store: Store::new(),
        })
    }

    /// The PKI.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The shared store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts an instance listening on `addr` (port 0 picks a free port).
    pub async fn start(&self, addr: SocketAddr) -> Result<ApiServer, Error> {
        ApiServer::start(self, addr, ServerOptions::default()).await
    }

    /// Starts an instance with non-default options.
    pub async fn start_with(
        &self,
        addr: SocketAddr,
        options: ServerOptions,
    ) -> Result<ApiServer, Error> {
        ApiServer::start(self, addr, options).await
    }

    /// Serves on an already bound listener: bind it inside a network
    /// namespace (from a thread that entered it) to run one instance per
    /// namespace, all sharing this cluster's store. The certificate carries
    /// the listener's IP, so bind a specific address, not a wildcard.
    pub fn serve(
        &self,
        listener: std::net::TcpListener,
        options: ServerOptions,
    ) -> Result<ApiServer, Error> {
        listener.set_nonblocking(true)?;
        ApiServer::serve(self, tokio::net::TcpListener::from_std(listener)?, options)
    }

    /// Starts an instance on `addr` inside the network namespace at `netns`
    /// (e.g. `/run/netns/NAME`; needs CAP_SYS_ADMIN).
    pub fn start_in_netns(
        &self,
        netns: &Path,
        addr: SocketAddr,
        options: ServerOptions,
    ) -> Result<ApiServer, Error> {
        self.serve(bind_in_netns(netns, addr)?, options)
    }

    /// A kubeconfig for the admin user pointing at `server`, with embedded
    /// CA, client certificate and key (the shape of k0s's admin.conf).
    pub fn kubeconfig(&self, server: SocketAddr) -> String {
        let ca = STANDARD.encode(self.pki.ca_pem());
        let cert = STANDARD.encode(self.pki.client_cert_pem());
        let key = STANDARD.encode(self.pki.client_key_pem());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: https://{server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: admin@local\n  context:\n    cluster: local\n    namespace: default\n    user: admin\ncurrent-context: admin@local\nusers:\n- name: admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n"
        )
    }

    /// Writes [`Self::kubeconfig`] to `path` (mode 0600).
    pub fn write_kubeconfig(&self, path: &Path, server: SocketAddr) -> Result<(), Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(self.kubeconfig(server).as_bytes())?;
        Ok(())
    }
}
