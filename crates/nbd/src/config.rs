//! The limits of an NBD server: what one client, and all of them together, may make it hold.
//!
//! A request's payload bytes (the data of a READ or a WRITE) are counted from the moment the
//! reader takes the request off the socket until its reply has been *written* to the socket,
//! not merely queued: a client that sends large READs and never reads the replies stops being
//! served once its connection's budget is spent, and every connection draws on one server-wide
//! budget too, so many such clients together cannot grow the server without bound. A request
//! larger than a budget is counted as the whole budget (it runs alone).
//!
//! Connections beyond [`ServerConfig::max_connections`] are accepted and closed at once. A
//! connection on which no request arrived and no reply was written for
//! [`ServerConfig::idle_timeout`] is closed; that includes a client that stopped reading its
//! replies, whose budget is then given back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Tunables of [`crate::serve_with`]; [`ServerConfig::default`] holds the values [`crate::serve`]
/// uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Most connections open at once (default 256); more are closed as soon as accepted.
    pub max_connections: usize,
    /// Close a connection after this long with no request read and no reply written; `None`
    /// (the default) never closes one for being idle: the Linux kernel client keeps idle
    /// connections for as long as the device is attached.
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose client has not taken a reply for this long (default 60 s): a
    /// client that stops reading would otherwise keep the bytes of its replies counted against
    /// the server-wide budget, and other clients would wait for them. `None`: never.
    pub reply_timeout: Option<Duration>,
    /// Most requests of one connection in flight (default 64).
    pub max_requests_per_connection: usize,
    /// Most payload bytes of one connection's requests in flight, counted until the reply is
    /// written (default 128 MiB).
    pub max_bytes_per_connection: usize,
    /// Most payload bytes in flight over all connections of the server (default 512 MiB).
    pub max_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            idle_timeout: None,
            reply_timeout: Some(Duration::from_secs(60)),
            max_requests_per_connection: 64,
            max_bytes_per_connection: 128 * 1024 * 1024,
            max_bytes: 512 * 1024 * 1024,
        }
    }
}

/// A byte budget: a semaphore and its size, so that no request asks for more than it holds.
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    permits: Arc<Semaphore>,
    size: usize,
}

impl Budget {
    /// A budget of `bytes` (at least one; at most what a semaphore holds).
    pub(crate) fn new(bytes: usize) -> Self {
        let size = bytes.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// Waits for `cost` bytes (the whole budget if it is larger); `None` if the budget closed.
    pub(crate) async fn take(&self, cost: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let n = cost.min(u32::try_from(self.size).unwrap_or(u32::MAX));
        self.permits.clone().acquire_many_owned(n).await.ok()
    }
}
