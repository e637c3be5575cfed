//! The server side: accept connections, run each request through a [`Handler`], answer.
//!
//! [`serve`] owns the accept loop. Each connection gets one task that does the handshake and then
//! reads frames; every request is handled in its own task, so a slow read does not hold up a
//! fast write behind it, and responses go back in completion order (the client matches them
//! by request id). Two per-connection semaphores bound the requests in flight and their bytes
//! (the request's payload plus [`Request::answer_bound`] for its answer); the permits are held
//! until the answer has been *written* to the socket, not merely queued, so a peer that stops
//! reading stops being served. At a limit the connection stops reading, and TCP flow control
//! pushes back on the client. Responses go through a bounded channel to a writer task that
//! flushes when it has nothing more queued.
//!
//! A request whose frame is sound but whose payload does not parse is answered with
//! `Error { code: BadRequest }`, and one that asks for more than an answer may carry
//! ([`Request::check_lengths`]: a `Read` of 4 GiB) with `Error { code: OutOfRange }` before the
//! handler sees it, so no length from the network drives an allocation; the connection lives
//! on. A frame error (magic, version, checksum, length) closes that connection only.
//! Cancelling the shutdown token stops the accept loop and drops every connection at once,
//! in-flight handlers included (their answers are lost; clients see a retryable
//! `ConnectionLost`), and [`serve`] returns when all are gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use strata_types::ServerId;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::WireError;
use crate::frame::{FrameCodec, FrameKind, WireMessage};
use crate::handshake::{exchange, Hello};
use crate::message::{ErrorCode, Request, Response};
use crate::writer::{FrameWriter, FLUSH_AT};

/// What a server does with requests; implemented over the block store by the volume engine.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from the server `peer`. Called concurrently, also for requests of
    /// the same connection, in no guaranteed order: a caller that needs one request to follow
    /// another (a `Flush` covering a `Write`) waits for the first answer before sending the
    /// second, as NBD clients do. Refusals are answered as [`Response::Error`]. `conn` names
    /// the connection the request came over (unique in this process), for state that must not
    /// outlive it.
    async fn handle(&self, peer: ServerId, conn: u64, req: Request) -> Response;

    /// Connection `conn` closed: every request it carried has been handled.
    fn closed(&self, _conn: u64) {}
}

/// Names the connections of this process, for [`Handler::handle`].
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Tunables of [`serve`].
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This server's id, sent in the handshake.
    pub id: ServerId,
    /// Requests handled at once per connection.
    pub max_in_flight: usize,
    /// How long a new connection may take to send its hello.
    pub handshake_timeout: Duration,
    /// The frame payload bound, in both directions.
    pub max_payload: u32,
    /// Bytes of requests and answers in flight per connection, counted until the answer is
    /// written (a request needing more counts as all of it, and runs alone).
    pub max_bytes_in_flight: usize,
}

impl ServerConfig {
    /// Defaults for server `id`: 64 requests and 256 MiB in flight per connection, 5 s
    /// handshake, 64 MiB frames.
    pub fn new(id: ServerId) -> Self {
        Self {
            id,
            max_in_flight: 64,
            handshake_timeout: Duration::from_secs(5),
            max_payload: crate::DEFAULT_MAX_PAYLOAD,
            max_bytes_in_flight: 256 * 1024 * 1024,
        }
    }
}

/// What an answer holds until it is written: its request's place and bytes.
type Held = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// Serves the wire protocol on `listener` until `shutdown` is cancelled, then closes every
/// connection and returns. Errors of single connections are logged, never returned.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically out of file descriptors; back off briefly rather than spin.
                tracing::warn!(error = %e, "wire accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (config, handler) = (config.clone(), handler.clone());
        conns.spawn(
            async move {
                if let Err(e) = connection(stream, config, handler).await {
                    tracing::debug!(%addr, error = %e, "wire connection closed");
                }
            }
            .in_current_span(),
        );
    }
    drop(listener);
    conns.shutdown().await;
}

/// Runs one connection until the peer closes it or it fails, then tells the handler.
async fn connection(
    stream: TcpStream,
    config: ServerConfig,
    handler: Arc<dyn Handler>,
) -> Result<(), WireError> {
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    /// Tells the handler when the connection ends, however it ends (its task may be aborted).
    struct Closed(Arc<dyn Handler>, u64);
    impl Drop for Closed {
        fn drop(&mut self) {
            self.0.closed(self.1);
        }
    }
    let _closed = Closed(handler.clone(), conn);
    requests(stream, config, handler, conn).await
}

/// Reads and answers the requests of connection `conn`.
async fn requests(
    mut stream: TcpStream,
    config: ServerConfig,
    handler: Arc<dyn Handler>,
    conn: u64,
) -> Result<(), WireError> {
    let _ = stream.set_nodelay(true);
    let peer = exchange(
        &mut stream,
        Hello::ours(config.id),
        config.handshake_timeout,
    )
    .await?;
    let (rd, wr) = stream.into_split();
    let codec = FrameCodec::new(config.max_payload);
    let mut frames = FramedRead::new(rd, codec);
    let limit = config.max_in_flight.max(1);
    let (tx, rx) = mpsc::channel::<(u64, Response, Option<Held>)>(limit);
    // Everything this connection spawns lives in `tasks`. However the peer ends the
    // connection, the requests already read are finished before it returns (and the handler
    // hears it closed): a write may be in the store already, and aborting its task halfway
    // would leave it there unrecorded. (Shutting the server down aborts them all.)
    let mut tasks = JoinSet::new();
    let writer = tasks.spawn(write_loop(FrameWriter::new(wr, config.max_payload), rx));
    let permits = Arc::new(Semaphore::new(limit));
    let byte_limit = u32::try_from(config.max_bytes_in_flight.max(1)).unwrap_or(u32::MAX);
    let bytes = Arc::new(Semaphore::new(byte_limit as usize));
    let mut ended = Ok(());
    while let Some(frame) = frames.next().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                ended = Err(e.into());
                break;
            }
        };
        while tasks.try_join_next().is_some() {}
        let id = frame.request_id;
        if frame.kind != FrameKind::Request {
            ended = Err(WireError::Protocol(
                "a response frame sent to a server".into(),
            ));
            break;
        }
        let payload_len = frame.payload.len() as u64;
        let refused = |code, e: crate::MessageError| Response::Error {
            code,
            message: e.to_string(),
        };
        let req = match Request::decode(frame.msg_type, frame.payload) {
            Ok(req) => req
                .check_lengths(config.max_payload)
                .map(|()| req)
                .map_err(|e| refused(ErrorCode::OutOfRange, e)),
            Err(e) => Err(refused(ErrorCode::BadRequest, e)),
        };
        let req = match req {
            Ok(req) => req,
            Err(resp) => {
                if tx.send((id, resp, None)).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let cost = (payload_len + req.answer_bound()).min(u64::from(byte_limit)) as u32;
        let held = async {
            let one = permits.clone().acquire_owned().await.ok()?;
            let many = bytes.clone().acquire_many_owned(cost).await.ok()?;
            Some((one, many))
        };
        // A `Release` ends a hold that requests in flight may be waiting for: it takes no
        // permit, so it is never queued behind them.
        let held = if matches!(req, Request::Release { .. }) {
            None
        } else {
            let Some(held) = held.await else {
                break;
            };
            Some(held)
        };
        let (handler, tx) = (handler.clone(), tx.clone());
        tasks.spawn(
            async move {
                let resp = handler.handle(peer, conn, req).await;
                let _ = tx.send((id, resp, held)).await;
            }
            .in_current_span(),
        );
    }
    // The peer closed its side: finish the requests already read, then let the writer drain.
    // It broke the connection: no answer is written any more (a peer that stops reading must
    // not keep the handlers waiting to queue theirs), the handlers still finish.
    if ended.is_err() {
        writer.abort();
    }
    drop(tx);
    while tasks.join_next().await.is_some() {}
    ended
}

/// Writes answers, flushing when nothing more is queued; drops each answer's permits only once
/// it has been flushed to the socket.
async fn write_loop(
    mut sink: FrameWriter<OwnedWriteHalf>,
    mut rx: mpsc::Receiver<(u64, Response, Option<Held>)>,
) {
    let mut unwritten: Vec<Held> = Vec::new();
    while let Some((id, resp, held)) = rx.recv().await {
        let resp = fit(resp, sink.max_payload());
        unwritten.extend(held);
        let result = match sink.queue(id, &resp) {
            Ok(()) if rx.is_empty() || sink.queued_bytes() >= FLUSH_AT => {
                let flushed = sink.flush().await;
                unwritten.clear();
                flushed
            }
            other => other,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "wire response write failed");
            return;
        }
    }
}

/// Replaces a response too large to frame by an error, so the client gets an answer.
fn fit(resp: Response, max: u32) -> Response {
    if resp.payload_len() <= max as usize {
        return resp;
    }
    Response::Error {
        code: ErrorCode::OutOfRange,
        message: format!(
            "response of {} bytes exceeds the frame limit of {max}",
            resp.payload_len()
        ),
    }
}
