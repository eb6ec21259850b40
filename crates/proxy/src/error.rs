//! Errors of the proxy crate.

use std::io;
use std::net::SocketAddr;

/// Errors returned by [`crate::Proxy`].
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket could not be created, bound or put in listen mode.
    #[error("failed to listen on {addr}")]
    Bind {
        /// The address we tried to listen on.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A listening socket handed over by a parent process is not one the
    /// configuration can use.
    #[error("cannot take over the inherited listening socket for {want}")]
    Adopt {
        /// The configured listening address.
        want: SocketAddr,
        /// What is wrong with it.
        #[source]
        source: io::Error,
    },
    /// The configuration has no bootstrap backend.
    #[error("no initial backend configured")]
    NoInitialBackend,
    /// `bind` was called outside a tokio runtime.
    #[error("proxy must be bound inside a tokio runtime")]
    NoRuntime,
    /// The proxy's own thread or its runtime could not be started.
    #[error("failed to start the proxy thread")]
    Thread(#[source] io::Error),
}
