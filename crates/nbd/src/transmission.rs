//! The transmission phase: many requests in flight, replies in completion order.
//!
//! Three kinds of task share one connection:
//! - the **reader** (this function's own task) fills a `BytesMut` from the socket, takes whole
//!   requests off it with [`decode_request`] (write payloads become `Bytes` views of the read
//!   buffer, never copied), checks each with [`validate`], and spawns one task per valid request;
//! - **request tasks** call the device and turn the outcome into one [`Reply`];
//! - the **writer** receives replies over a channel and writes them in batches: it drains
//!   whatever is queued, coalesces headers and small bodies into one buffer, sends large bodies
//!   as their own slices of a vectored write, and flushes when the queue is empty. Each reply is
//!   one message written whole, so replies never interleave.
//!
//! Back-pressure ([`crate::config`]): the reader takes a request permit and byte permits (the
//! connection's, then the server's) for each request before it reads further; they travel with
//! the reply to the writer, which drops them only once the reply is written to the socket. A
//! client that does not read its replies therefore stops being served instead of making the
//! server buffer them without limit.
//!
//! A WRITE longer than the maximum payload is answered with an error once its payload has been
//! read and thrown away as it arrives (never buffered whole), and the connection goes on.
//!
//! Ending: on `NBD_CMD_DISC`, end of stream, a framing error, or server shutdown the reader stops
//! reading, drops its end of the channel and waits for the writer, which finishes once every
//! in-flight request has replied, then shuts the socket down. If writing fails the writer cancels
//! the reader. When the connection has been idle too long (no request read, no reply written)
//! the reader gives up and the writer is stopped at once, whatever it was waiting for. Errors of
//! single requests are replies, never the end of the connection.

use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use crate::config::{Budget, ServerConfig};
use crate::consts;
use crate::device::{BlockDevice, IoError};
use crate::error::NbdError;
use crate::negotiate::Negotiated;
use crate::reply::{block_status_descriptors, Reply};
use crate::request::{decode_request, validate, Command, Request, Session};

/// Bodies up to this size are copied into the writer's batch buffer; larger ones are sent as
/// their own slice.
const COALESCE_LIMIT: usize = 16 * 1024;
/// Free space kept in the read buffer before each read.
const READ_CHUNK: usize = 256 * 1024;

/// What a connection draws on: the server's limits and its server-wide byte budget.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// The server's configuration.
    pub(crate) config: ServerConfig,
    /// Payload bytes in flight over all connections.
    pub(crate) server_bytes: Budget,
}

impl Limits {
    /// The limits of `config`, with a new server-wide budget.
    pub(crate) fn new(config: ServerConfig) -> Self {
        let server_bytes = Budget::new(config.max_bytes);
        Self {
            config,
            server_bytes,
        }
    }
}

/// The permits a request holds until its reply is written.
struct Held {
    _request: OwnedSemaphorePermit,
    _connection_bytes: OwnedSemaphorePermit,
    _server_bytes: OwnedSemaphorePermit,
}

/// A reply on its way to the writer, with what it holds (none for a refused request).
type Queued = (Reply, Option<Held>);

/// When the connection last did something (read a request or wrote replies).
struct Activity {
    since: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Returns once nothing happened for `timeout`; never without one.
    async fn idle(&self, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        loop {
            let deadline = self.last() + timeout;
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Why the reader stopped.
enum Stop {
    /// Ended normally: let in-flight requests reply.
    Done(Result<(), NbdError>),
    /// Idle too long: drop everything now.
    Idle,
}

/// Serves requests until the client disconnects, the stream fails, `shutdown` fires, or the
/// connection stays idle for the configured timeout.
pub(crate) async fn transmit<R, W>(
    mut rd: R,
    wr: W,
    mut buf: BytesMut,
    neg: Negotiated,
    limits: &Limits,
    shutdown: &CancellationToken,
) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Negotiated { device, session } = neg;
    let config = &limits.config;
    let max_requests = config
        .max_requests_per_connection
        .clamp(1, Semaphore::MAX_PERMITS);
    let stop = CancellationToken::new();
    let kill = CancellationToken::new();
    let activity = Arc::new(Activity::new());
    let (tx, rx) = mpsc::channel::<Queued>(max_requests);
    let writer = tokio::spawn(
        write_loop(
            wr,
            rx,
            stop.clone(),
            kill.clone(),
            activity.clone(),
            config.reply_timeout,
        )
        .in_current_span(),
    );
    let requests = Arc::new(Semaphore::new(max_requests));
    let connection_bytes = Budget::new(config.max_bytes_per_connection);
    // Payload bytes still to be read and thrown away (a WRITE over the maximum payload).
    let mut discard = 0usize;
    // The error reply to that WRITE, sent once its payload is read: a client still sending it
    // (libnbd) takes a reply that comes first for one to a request it has not finished.
    let mut refusal: Option<Reply> = None;
    let stopped: Stop = async {
        loop {
            if discard > 0 {
                let n = discard.min(buf.len());
                buf.advance(n);
                discard -= n;
            }
            if discard == 0 {
                if let Some(reply) = refusal.take() {
                    if tx.send((reply, None)).await.is_err() {
                        return Stop::Done(Ok(()));
                    }
                }
            }
            let frame = if discard > 0 {
                None
            } else {
                match decode_request(&mut buf) {
                    Ok(frame) => frame,
                    Err(e) => return Stop::Done(Err(e.into())),
                }
            };
            let Some((req, payload)) = frame else {
                if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                    buf.reserve(READ_CHUNK);
                }
                let n = tokio::select! {
                    _ = shutdown.cancelled() => return Stop::Done(Ok(())),
                    _ = stop.cancelled() => return Stop::Done(Ok(())),
                    _ = activity.idle(config.idle_timeout) => return Stop::Idle,
                    n = rd.read_buf(&mut buf) => n,
                };
                match n {
                    Ok(0) if buf.is_empty() && discard == 0 => return Stop::Done(Ok(())),
                    Ok(0) => return Stop::Done(Err(NbdError::Truncated)),
                    Ok(_) => continue,
                    Err(e) => return Stop::Done(Err(e.into())),
                }
            };
            activity.touch();
            discard = req.discard_len();
            if req.command == Command::Disc {
                debug!("client sent NBD_CMD_DISC");
                return Stop::Done(Ok(()));
            }
            if let Err(errno) = validate(&req, &session) {
                debug!(?req, errno, "request refused");
                let reply = error_reply(&session, req.cookie, errno, "invalid request");
                if discard > 0 {
                    refusal = Some(reply);
                } else if tx.send((reply, None)).await.is_err() {
                    return Stop::Done(Ok(()));
                }
                continue;
            }
            let cost = match req.command {
                Command::Read | Command::Write => req.len,
                _ => 0,
            };
            let held = tokio::select! {
                _ = shutdown.cancelled() => return Stop::Done(Ok(())),
                _ = stop.cancelled() => return Stop::Done(Ok(())),
                _ = activity.idle(config.idle_timeout) => return Stop::Idle,
                held = async {
                    Some(Held {
                        _request: requests.clone().acquire_owned().await.ok()?,
                        _connection_bytes: connection_bytes.take(cost).await?,
                        _server_bytes: limits.server_bytes.take(cost).await?,
                    })
                } => held,
            };
            let Some(held) = held else {
                return Stop::Done(Ok(()));
            };
            let device = device.clone();
            let tx = tx.clone();
            tokio::spawn(
                async move {
                    let reply = execute(&*device, &session, req, payload).await;
                    let _ = tx.send((reply, Some(held))).await;
                }
                .in_current_span(),
            );
        }
    }
    .await;
    drop(tx);
    let read_result = match stopped {
        Stop::Done(result) => result,
        Stop::Idle => {
            debug!("connection idle; closing");
            kill.cancel();
            Ok(())
        }
    };
    let write_result = writer.await.map_err(std::io::Error::other)?;
    read_result?;
    write_result.map_err(NbdError::Io)
}

fn error_reply(session: &Session, cookie: u64, errno: u32, message: &str) -> Reply {
    if session.structured {
        Reply::error(cookie, errno, message)
    } else {
        Reply::simple(cookie, errno)
    }
}

/// Runs one validated request against the device and builds its reply.
async fn execute(dev: &dyn BlockDevice, s: &Session, req: Request, payload: Bytes) -> Reply {
    let (cookie, offset, len) = (req.cookie, req.offset, req.len);
    let result = match req.command {
        Command::Read if len == 0 => {
            return if s.structured {
                Reply::none(cookie)
            } else {
                Reply::simple(cookie, 0)
            };
        }
        Command::Read => match dev.read(offset, len).await {
            Ok(data) if data.len() == len as usize => {
                return if s.structured && is_zero(&data) {
                    // Like qemu-nbd: zeroes travel as a 12-byte hole chunk, not as data.
                    Reply::offset_hole(cookie, offset, len)
                } else if s.structured {
                    Reply::offset_data(cookie, offset, data)
                } else {
                    Reply::simple_read(cookie, data)
                };
            }
            Ok(data) => Err(IoError::Io(format!(
                "device read {} of {len} bytes",
                data.len()
            ))),
            Err(e) => Err(e),
        },
        Command::Write if len == 0 => Ok(()),
        Command::Write => dev.write(offset, payload, req.fua()).await,
        Command::Flush => dev.flush().await,
        Command::Trim if len == 0 => Ok(()),
        Command::Trim => match dev.trim(offset, len).await {
            Ok(()) if req.fua() => dev.flush().await,
            other => other,
        },
        Command::WriteZeroes if len == 0 => Ok(()),
        Command::WriteZeroes => {
            let no_hole = req.flags & consts::CMD_FLAG_NO_HOLE != 0;
            dev.write_zeroes(offset, len, req.fua(), no_hole).await
        }
        Command::BlockStatus => match (s.meta_context, dev.block_status(offset, len).await) {
            (Some(context), Ok(extents)) => {
                let one = req.flags & consts::CMD_FLAG_REQ_ONE != 0;
                let descriptors = block_status_descriptors(&extents, len, one);
                return Reply::block_status(cookie, context, &descriptors);
            }
            (None, _) => Err(IoError::InvalidArgument("no metadata context".into())),
            (_, Err(e)) => Err(e),
        },
        Command::Disc | Command::Unknown(_) => Err(IoError::InvalidArgument("command".into())),
    };
    match result {
        Ok(()) => Reply::simple(cookie, 0),
        Err(e) => {
            debug!(?req, error = %e, "request failed");
            error_reply(s, cookie, e.errno(), &e.to_string())
        }
    }
}

/// Whether every byte is zero; stops at the first 64-byte block holding data, so the cost on
/// real data is negligible, and on zeroes far below sending them.
fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    let blocks_zero = blocks.all(|b| b.iter().fold(0u8, |acc, x| acc | x) == 0);
    blocks_zero && blocks.remainder().iter().all(|b| *b == 0)
}

/// Writes replies as they arrive, batching whatever is queued, and drops each reply's permits
/// once it is written; see the module doc. Returns at once (without a shutdown of the socket)
/// when `kill` fires.
async fn write_loop<W>(
    mut wr: W,
    mut rx: mpsc::Receiver<Queued>,
    stop: CancellationToken,
    kill: CancellationToken,
    activity: Arc<Activity>,
    reply_timeout: Option<Duration>,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut small = BytesMut::with_capacity(64 * 1024);
    let mut segments: Vec<Bytes> = Vec::with_capacity(16);
    let mut written: Vec<Option<Held>> = Vec::with_capacity(16);
    let result = async {
        while let Some(first) = rx.recv().await {
            let mut batched = 0;
            let mut next = Some(first);
            while let Some((reply, held)) = next {
                small.extend_from_slice(reply.head());
                let body = reply.body();
                if body.len() <= COALESCE_LIMIT {
                    small.extend_from_slice(body);
                } else {
                    segments.push(small.split().freeze());
                    segments.push(body.clone());
                }
                written.push(held);
                batched += reply.wire_len();
                next = if batched < 4 * 1024 * 1024 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !small.is_empty() {
                segments.push(small.split().freeze());
            }
            let write = async {
                write_segments(&mut wr, &mut segments).await?;
                wr.flush().await
            };
            match reply_timeout {
                Some(t) => tokio::time::timeout(t, write).await.map_err(|_| {
                    debug!(timeout = ?t, "the client took no reply in time; closing the connection");
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client took no reply within the reply timeout",
                    )
                })??,
                None => write.await?,
            }
            // Only now are these replies off the server's hands.
            written.clear();
            activity.touch();
        }
        wr.shutdown().await
    };
    let result = tokio::select! {
        result = result => result,
        _ = kill.cancelled() => Ok(()),
    };
    if result.is_err() {
        stop.cancel();
    }
    result
}

/// Writes all segments with vectored writes, then empties the list.
async fn write_segments<W>(wr: &mut W, segments: &mut Vec<Bytes>) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    segments.retain(|s| !s.is_empty());
    let mut first = 0;
    while first < segments.len() {
        let slices: Vec<IoSlice<'_>> = segments[first..]
            .iter()
            .take(64)
            .map(|s| IoSlice::new(s))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(seg) = segments.get_mut(first) else {
                break;
            };
            let take = n.min(seg.len());
            seg.advance(take);
            n -= take;
            if seg.is_empty() {
                first += 1;
            }
        }
    }
    segments.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_detection() {
        let table: [(Vec<u8>, bool); 6] = [
            (vec![], true),
            (vec![0; 1], true),
            (vec![0; 4096], true),
            (vec![0; 4099], true),
            ([vec![0; 4098], vec![1]].concat(), false),
            ([vec![0; 100], vec![1], vec![0; 100]].concat(), false),
        ];
        for (data, expected) in table {
            assert_eq!(is_zero(&data), expected, "len {}", data.len());
        }
    }
}
