//! Integration tests of the wire protocol over real TCP on 127.0.0.1, against an in-memory
//! [`Handler`] test double.

mod failures;
mod pipelining;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_types::{LayerId, ServerId, VolumeId};
use strata_wire::{serve, ErrorCode, Handler, Request, Response, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Reads at this offset never finish: for timeouts and killing a server mid-call.
pub const HANG_OFFSET: u64 = u64::MAX - 1;

/// A block map in a `HashMap`: `(volume, offset) → bytes`, per write, plus frozen layers.
#[derive(Default)]
pub struct MemHandler {
    /// Written data by volume and offset.
    pub blocks: Mutex<HashMap<(VolumeId, u64), Bytes>>,
    /// Volumes that exist.
    pub volumes: Mutex<HashSet<VolumeId>>,
    /// Layers that are frozen: writes to them are fenced.
    pub frozen: Mutex<HashSet<LayerId>>,
    /// Requests being handled now, and the most seen at once.
    pub in_flight: AtomicUsize,
    /// The highest value `in_flight` reached.
    pub max_in_flight: AtomicUsize,
    /// Signalled when a request at [`HANG_OFFSET`] has started.
    pub hung: Notify,
    /// The peers requests came from.
    pub peers: Mutex<HashSet<ServerId>>,
}

impl MemHandler {
    /// A handler that knows `volumes`.
    pub fn with_volumes(volumes: &[VolumeId]) -> Arc<Self> {
        let h = Self::default();
        h.volumes
            .lock()
            .expect("lock")
            .extend(volumes.iter().copied());
        Arc::new(h)
    }

    fn known(&self, volume: VolumeId) -> Result<(), Response> {
        if self.volumes.lock().expect("lock").contains(&volume) {
            Ok(())
        } else {
            Err(Response::Error {
                code: ErrorCode::UnknownVolume,
                message: format!("no volume {volume}"),
            })
        }
    }

    fn unfrozen(&self, layer: LayerId) -> Result<(), Response> {
        if self.frozen.lock().expect("lock").contains(&layer) {
            Err(Response::Error {
                code: ErrorCode::Fenced,
                message: format!("layer {layer} is frozen"),
            })
        } else {
            Ok(())
        }
    }

    async fn answer(&self, req: Request) -> Result<Response, Response> {
        match req {
            Request::Write {
                volume,
                layer,
                offset,
                data,
                ..
            } => {
                self.known(volume)?;
                self.unfrozen(layer)?;
                // Vary the handling time so responses overtake each other.
                tokio::time::sleep(Duration::from_micros(offset % 5 * 300)).await;
                self.blocks
                    .lock()
                    .expect("lock")
                    .insert((volume, offset), data);
                Ok(Response::Ok)
            }
            Request::Read {
                volume,
                offset,
                len,
                ..
            } => {
                self.known(volume)?;
                if offset == HANG_OFFSET {
                    self.hung.notify_one();
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_micros(offset % 3 * 400)).await;
                let blocks = self.blocks.lock().expect("lock");
                let mut data = blocks
                    .get(&(volume, offset))
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                data.resize(len as usize, 0);
                Ok(Response::Data(Bytes::from(data)))
            }
            Request::Flush { volume } => self.known(volume).map(|()| Response::Ok),
            Request::Trim {
                volume,
                layer,
                offset,
                ..
            } => {
                self.known(volume)?;
                self.unfrozen(layer)?;
                self.blocks.lock().expect("lock").remove(&(volume, offset));
                Ok(Response::Ok)
            }
            Request::Ping => Ok(Response::Pong { run: 1 }),
            Request::GetChunk { .. }
            | Request::PutChunk { .. }
            | Request::Digest { .. }
            | Request::Allocation { .. }
            | Request::Release { .. } => Err(Response::Error {
                code: ErrorCode::BadRequest,
                message: "the test handler keeps no chunks".into(),
            }),
        }
    }
}

/// Decrements the in-flight count even when the handler task is aborted.
struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Handler for MemHandler {
    async fn handle(&self, peer: ServerId, _conn: u64, req: Request) -> Response {
        self.peers.lock().expect("lock").insert(peer);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = InFlight(&self.in_flight);
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.answer(req).await.unwrap_or_else(|e| e)
    }
}

/// A running test server.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its id.
    pub id: ServerId,
    /// Cancel to kill it.
    pub shutdown: CancellationToken,
    /// The serve task.
    pub task: JoinHandle<()>,
}

impl TestServer {
    /// Serves `handler` on `addr` (port 0 for a fresh port).
    pub async fn start(addr: SocketAddr, id: ServerId, handler: Arc<MemHandler>) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            ServerConfig::new(id),
            handler,
            shutdown.clone(),
        ));
        Self {
            addr,
            id,
            shutdown,
            task,
        }
    }

    /// Kills the server: stops accepting and drops every connection; waits until it is gone.
    pub async fn kill(self) {
        self.shutdown.cancel();
        self.task.await.expect("serve task");
    }
}

/// An address with a fresh port.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
