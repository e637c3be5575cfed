//! The accept loop and the per-connection driver.
//!
//! [`serve_with`] accepts TCP connections until its cancellation token fires, turns on
//! `TCP_NODELAY` (the doc asks for it: replies are often smaller than a segment), and runs each
//! connection in its own task inside a tracing span naming the peer, within the limits of its
//! [`ServerConfig`] (connections beyond the maximum are closed at once); [`serve`] does the same
//! with the default limits. A connection that fails is logged and
//! forgotten; accept errors (out of file descriptors, aborted handshakes) are logged and retried
//! after a short pause, so nothing a client does stops the server. After cancellation, `serve`
//! waits for the connections to finish: each stops reading, lets its in-flight requests reply,
//! and closes.
//!
//! [`serve_connection`] drives one connection over any byte stream: the handshake
//! ([`crate::negotiate`]) then the transmission phase ([`crate::transmission`]). TCP streams are
//! split into owned halves; other streams through `tokio::io::split`.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::ServerConfig;
use crate::device::{Client, ExportProvider};
use crate::error::NbdError;
use crate::negotiate::negotiate;
use crate::transmission::{transmit, Limits};

/// Serves NBD on `listener` with the default [`ServerConfig`] until `shutdown` is cancelled;
/// see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    exports: Arc<dyn ExportProvider>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, exports, ServerConfig::default(), shutdown).await
}

/// Serves NBD on `listener` within the limits of `config` until `shutdown` is cancelled, then
/// waits for open connections to drain. One task per connection; a failing connection never
/// stops the server.
pub async fn serve_with(
    listener: TcpListener,
    exports: Arc<dyn ExportProvider>,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "nbd server listening");
    }
    // Beyond what a semaphore counts is as good as no limit.
    let connections = Arc::new(Semaphore::new(
        config.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let limits = Limits::new(config);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "nbd accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            warn!(%peer, max = limits.config.max_connections, "too many nbd connections; closing a new one");
            drop(stream);
            continue;
        };
        let exports = exports.clone();
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        let span = info_span!("nbd_conn", %peer);
        tracker.spawn(
            async move {
                debug!("connection accepted");
                match serve_tcp(stream, peer, exports, &limits, shutdown).await {
                    Ok(()) => debug!("connection closed"),
                    Err(e) => info!(error = %e, "connection ended with an error"),
                }
                drop(slot);
            }
            .instrument(span),
        );
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn serve_tcp(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    exports: Arc<dyn ExportProvider>,
    limits: &Limits,
    shutdown: CancellationToken,
) -> Result<(), NbdError> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let client = Client { addr: Some(peer) };
    run(rd, wr, exports, client, limits, shutdown).await
}

/// How long a client may take from connecting to entering transmission.
pub const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one NBD connection over `stream`: handshake, then transmission, until the client
/// disconnects or `shutdown` fires, within the default [`ServerConfig`] (as the only connection
/// of a server). Returns the reason if the connection ended abnormally.
pub async fn serve_connection<S>(
    stream: S,
    exports: Arc<dyn ExportProvider>,
    shutdown: CancellationToken,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let limits = Limits::new(ServerConfig::default());
    run(rd, wr, exports, Client::default(), &limits, shutdown).await
}

async fn run<R, W>(
    mut rd: R,
    mut wr: W,
    exports: Arc<dyn ExportProvider>,
    client: Client,
    limits: &Limits,
    shutdown: CancellationToken,
) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(8192);
    // A client that connects and then stalls must not hold a connection for ever.
    let negotiated = tokio::time::timeout(
        NEGOTIATION_TIMEOUT,
        negotiate(&mut rd, &mut wr, &mut buf, &*exports, client, &shutdown),
    )
    .await
    .map_err(|_| NbdError::NegotiationTimeout(NEGOTIATION_TIMEOUT))??;
    let Some(neg) = negotiated else {
        return Ok(());
    };
    debug!(
        size = neg.session.size,
        read_only = neg.session.read_only,
        structured = neg.session.structured,
        "entering transmission"
    );
    transmit(rd, wr, buf, neg, limits, &shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlockDevice, ExportInfo, OpenError};
    use tokio::io::AsyncReadExt;

    struct NoExports;

    #[async_trait::async_trait]
    impl ExportProvider for NoExports {
        async fn list(&self) -> Vec<ExportInfo> {
            Vec::new()
        }
        async fn open(
            &self,
            _name: &str,
            _client: crate::Client,
        ) -> Result<Arc<dyn BlockDevice>, OpenError> {
            Err(OpenError::Unknown)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stalls_in_the_handshake_is_dropped() {
        let (mut client, server) = tokio::io::duplex(4096);
        let serving = tokio::spawn(serve_connection(
            server,
            Arc::new(NoExports),
            CancellationToken::new(),
        ));
        let mut greeting = [0u8; 18];
        client.read_exact(&mut greeting).await.expect("greeting");
        // Say nothing more: the server gives up after the negotiation timeout.
        let ended = serving.await.expect("task");
        assert!(
            matches!(ended, Err(NbdError::NegotiationTimeout(_))),
            "{ended:?}"
        );
    }
}
