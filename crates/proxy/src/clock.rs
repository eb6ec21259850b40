//! The proxy's one clock read, through tokio so paused-time tests drive it.

use std::time::Instant;

/// Now, as tokio sees it.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
