//! The client side of one connection: many calls in flight, matched by request id.
//!
//! A [`WireClient`] owns two tasks. The *writer* takes `(id, request)` pairs from a bounded
//! channel and queues them for the socket (block data without a copy, `writer.rs`), sending
//! when the channel is momentarily empty or much is queued, so a burst of calls becomes one
//! vectored write. The *reader* decodes response frames
//! and completes the matching call through the oneshot sender stored under its id in the
//! `pending` map. Responses may arrive in any order.
//!
//! Failure discipline: when either task sees the connection fail (EOF, I/O error, a corrupt
//! frame), it marks the connection dead by replacing the pending map with `None` and fails every
//! call still waiting with [`WireError::ConnectionLost`], which is retryable. A call started
//! after that fails at once with the same error, because inserting into a dead map is refused
//! under the same lock — no call can be left waiting on a dead connection. A call that times
//! out (or whose future is dropped) removes its own entry; a late response is then ignored.
//!
//! Dropping the last clone of a client cancels both tasks and closes the socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use strata_types::ServerId;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::WireError;
use crate::frame::{FrameCodec, WireMessage};
use crate::handshake::{exchange, Hello};
use crate::message::{Request, Response};
use crate::writer::{FrameWriter, FLUSH_AT};

/// Tunables of a client connection.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// How long a TCP connect plus the handshake may take.
    pub connect_timeout: Duration,
    /// How long one call may wait for its response.
    pub call_timeout: Duration,
    /// Requests queued for the writer before `call` waits (backpressure).
    pub queue_depth: usize,
    /// The frame payload bound, in both directions.
    pub max_payload: u32,
    /// The local IP connections leave from (`None`: the system's choice).
    pub local_ip: Option<std::net::IpAddr>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            call_timeout: Duration::from_secs(30),
            queue_depth: 256,
            max_payload: crate::DEFAULT_MAX_PAYLOAD,
            local_ip: None,
        }
    }
}

/// Opens a TCP connection to `addr`, from `local_ip` if given.
async fn dial(addr: SocketAddr, local_ip: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = local_ip else {
        return TcpStream::connect(addr).await;
    };
    let socket = if ip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

type Reply = oneshot::Sender<Result<Response, WireError>>;

/// State shared by the client handles and its two tasks.
struct Shared {
    /// Calls waiting for a response; `None` once the connection is dead.
    pending: Mutex<Option<HashMap<u64, Reply>>>,
    next_id: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<HashMap<u64, Reply>>> {
        // A poisoned lock only means another thread panicked while holding it; the map itself
        // is always left consistent, so keep using it.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection dead and fails every waiting call.
    fn fail_all(&self, why: &str) {
        let drained = self.lock().take();
        for (_, reply) in drained.into_iter().flatten() {
            let _ = reply.send(Err(WireError::ConnectionLost(why.to_string())));
        }
    }
}

/// Removes a call's pending entry if the call ends without a response (timeout, drop).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Some(map) = self.shared.lock().as_mut() {
            map.remove(&self.id);
        }
    }
}

/// A connection to one peer server. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct WireClient {
    shared: Arc<Shared>,
    tx: mpsc::Sender<(u64, Request)>,
    peer: ServerId,
    addr: SocketAddr,
    call_timeout: Duration,
    max_payload: u32,
    _stop: Arc<DropGuard>,
}

impl std::fmt::Debug for WireClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireClient")
            .field("peer", &self.peer)
            .field("addr", &self.addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl WireClient {
    /// Connects to `addr` with the default [`ClientConfig`] and performs the handshake.
    pub async fn connect(addr: SocketAddr, my_id: ServerId) -> Result<Self, WireError> {
        Self::connect_with(addr, my_id, ClientConfig::default()).await
    }

    /// Connects to `addr` and performs the handshake, with explicit tunables.
    pub async fn connect_with(
        addr: SocketAddr,
        my_id: ServerId,
        config: ClientConfig,
    ) -> Result<Self, WireError> {
        let connect = tokio::time::timeout(config.connect_timeout, dial(addr, config.local_ip));
        let mut stream = match connect.await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(WireError::Connect { addr, source }),
            Err(_) => {
                let source = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
                return Err(WireError::Connect { addr, source });
            }
        };
        let _ = stream.set_nodelay(true);
        let peer = exchange(&mut stream, Hello::ours(my_id), config.connect_timeout).await?;
        let (rd, wr) = stream.into_split();
        let shared = Arc::new(Shared {
            pending: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(1),
        });
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let stop = CancellationToken::new();
        let codec = FrameCodec::new(config.max_payload);
        tokio::spawn(write_loop(
            FrameWriter::new(wr, config.max_payload),
            rx,
            shared.clone(),
            stop.clone(),
        ));
        tokio::spawn(read_loop(
            FramedRead::new(rd, codec),
            shared.clone(),
            stop.clone(),
        ));
        Ok(Self {
            shared,
            tx,
            peer,
            addr,
            call_timeout: config.call_timeout,
            max_payload: config.max_payload,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    /// The peer's server id, from its handshake.
    pub fn peer_id(&self) -> ServerId {
        self.peer
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the connection has failed; every further call would fail with a retryable error.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().is_none()
    }

    /// Sends `req` and waits for its response, at most the configured call timeout.
    pub async fn call(&self, req: Request) -> Result<Response, WireError> {
        self.call_timeout(req, self.call_timeout).await
    }

    /// Sends `req` and waits for its response, at most `timeout`.
    pub async fn call_timeout(
        &self,
        req: Request,
        timeout: Duration,
    ) -> Result<Response, WireError> {
        let len = req.payload_len();
        if len > self.max_payload as usize {
            // Refused before sending: the connection stays usable.
            return Err(crate::FrameError::TooLarge {
                len: len as u64,
                max: self.max_payload,
            }
            .into());
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        match self.shared.lock().as_mut() {
            Some(map) => map.insert(id, reply_tx),
            None => return Err(lost("connection already closed")),
        };
        let _guard = PendingGuard {
            shared: &self.shared,
            id,
        };
        let exchange = async {
            self.tx
                .send((id, req))
                .await
                .map_err(|_| lost("connection writer stopped"))?;
            reply_rx
                .await
                .unwrap_or_else(|_| Err(lost("connection closed")))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| WireError::Timeout(timeout))?
    }
}

fn lost(why: &str) -> WireError {
    WireError::ConnectionLost(why.to_string())
}

async fn write_loop(
    mut sink: FrameWriter<OwnedWriteHalf>,
    mut rx: mpsc::Receiver<(u64, Request)>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let why = loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break "client dropped".to_string(),
            next = rx.recv() => next,
        };
        let Some((id, req)) = next else {
            break "client dropped".to_string();
        };
        // Queue without sending while more requests wait; send when none does or much is queued.
        let result = match sink.queue(id, &req) {
            Ok(()) if rx.is_empty() || sink.queued_bytes() >= FLUSH_AT => sink.flush().await,
            other => other,
        };
        if let Err(e) = result {
            break format!("write failed: {e}");
        }
    };
    tracing::debug!(%why, "wire client writer stopped");
    shared.fail_all(&why);
    stop.cancel();
}

async fn read_loop(
    mut stream: FramedRead<OwnedReadHalf, FrameCodec>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let why = loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break "connection closed".to_string(),
            frame = stream.next() => frame,
        };
        let frame = match frame {
            None => break "peer closed the connection".to_string(),
            Some(Err(e)) => break format!("read failed: {e}"),
            Some(Ok(frame)) => frame,
        };
        let id = frame.request_id;
        let Some(reply) = shared.lock().as_mut().and_then(|m| m.remove(&id)) else {
            // The call timed out or was dropped; its late answer is of no use.
            continue;
        };
        let _ = reply.send(frame.into_message::<Response>().map_err(WireError::from));
    };
    tracing::debug!(%why, "wire client reader stopped");
    shared.fail_all(&why);
    stop.cancel();
}
