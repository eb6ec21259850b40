//! Errors of the reconciler's setup. Once running, it retries everything.

use std::path::PathBuf;

/// Setup errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or parsed.
    #[error("failed to load kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The Kubernetes client could not be built.
    #[error("failed to create kubernetes client")]
    Client(#[source] kube::Error),
    /// The health checks' TLS configuration could not be built.
    #[error("failed to build the health check tls configuration")]
    Tls(#[source] kube::Error),
    /// The kubeconfig's `tls-server-name` is not a valid name.
    #[error("invalid tls server name {0:?}")]
    ServerName(String),
    /// A configuration value is out of range.
    #[error("invalid reconciler configuration: {0}")]
    Config(&'static str),
}
