//! The replica side: what this server does with chunk requests, from its own gateways (direct
//! calls) and from other servers' gateways (the wire protocol, [`ReplicaHandler`]).
//!
//! A write names the layer the gateway believes is the head. The replica answers `Fenced` if
//! that layer is frozen here, and `NotReady` if it does not know the layer yet (its copy of the
//! management state lags); the gateway retries either way. Writes carry the replicas the gateway
//! could not write (`missed`): they are recorded in the store *after* the data, so a resync that
//! reads a chunk after reading its mark always sees the data (see [`crate::resync`]).

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use strata_store::{ChunkImage, StoreError};
use strata_types::{LayerId, ServerId, VolumeId, CHUNK_SIZE};
use strata_wire::{ChunkMaps, ErrorCode, Handler, Request, Response, Run};

use crate::engine::Engine;
use crate::order::{Holder, Order};

/// Why a replica refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// The layer is frozen: the writer must use the new head.
    #[error("layer {0} is frozen")]
    Fenced(LayerId),
    /// The replica has not caught up with the volume or layer yet; retry shortly.
    #[error("not ready: {0}")]
    NotReady(String),
    /// The write was routed by another routing epoch than the replica admits: the gateway
    /// routes the whole change again (see [`crate::order`]).
    #[error("rerouted: {0}")]
    Rerouted(String),
    /// The range lies outside the volume.
    #[error("{0}")]
    OutOfRange(String),
    /// The replica's store is full.
    #[error("no space left on the replica")]
    NoSpace,
    /// The replica's storage failed.
    #[error("{0}")]
    Io(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
}

impl From<StoreError> for ReplicaError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ReadOnlyLayer(l) => Self::Fenced(l),
            StoreError::NoSuchVolume(_)
            | StoreError::NoSuchLayer { .. }
            | StoreError::LayerMerging(_) => Self::NotReady(e.to_string()),
            StoreError::OutOfRange { .. } => Self::OutOfRange(e.to_string()),
            StoreError::NoSpace => Self::NoSpace,
            other => Self::Io(other.to_string()),
        }
    }
}

impl ReplicaError {
    /// The wire form.
    pub fn to_response(&self) -> Response {
        let code = match self {
            Self::Fenced(_) => ErrorCode::Fenced,
            Self::NotReady(_) => ErrorCode::NotReady,
            Self::Rerouted(_) => ErrorCode::Rerouted,
            Self::OutOfRange(_) => ErrorCode::OutOfRange,
            Self::NoSpace => ErrorCode::NoSpace,
            Self::Io(_) => ErrorCode::Io,
            Self::BadRequest(_) => ErrorCode::BadRequest,
        };
        Response::Error {
            code,
            message: self.to_string(),
        }
    }

    /// From the wire form.
    pub fn from_wire(code: ErrorCode, message: String) -> Self {
        match code {
            ErrorCode::Fenced => Self::Fenced(LayerId::from_bytes([0; 16])),
            ErrorCode::NotReady | ErrorCode::UnknownVolume => Self::NotReady(message),
            ErrorCode::Rerouted => Self::Rerouted(message),
            ErrorCode::OutOfRange => Self::OutOfRange(message),
            ErrorCode::NoSpace => Self::NoSpace,
            ErrorCode::Io => Self::Io(message),
            ErrorCode::BadRequest => Self::BadRequest(message),
        }
    }
}

/// Runs a blocking store call on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReplicaError> + Send + 'static,
) -> Result<T, ReplicaError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ReplicaError::Io(format!("store task failed: {e}")))?
}

/// Checks that `layer` is the head of `volume` in this server's view.
fn check_head(engine: &Engine, volume: VolumeId, layer: LayerId) -> Result<(), ReplicaError> {
    let view = engine
        .view(volume)
        .ok_or_else(|| ReplicaError::NotReady(format!("volume {volume} is not known here yet")))?;
    match view.head() {
        Some(h) if h == layer => Ok(()),
        _ if view.layers.contains(&layer) => Err(ReplicaError::Fenced(layer)),
        _ => Err(ReplicaError::NotReady(format!(
            "layer {layer} of volume {} is not known here yet",
            view.name
        ))),
    }
}

/// The request that has its receiver record, durably on the answer, that each of `missed`
/// lacks `chunk` of `layer` of `volume` (a marks-only write, routed by `epoch`; naming the
/// receiver itself is an own mark).
pub(crate) fn marks_request(
    volume: VolumeId,
    layer: LayerId,
    chunk: u64,
    missed: Vec<ServerId>,
    epoch: u64,
) -> Request {
    Request::Write {
        volume,
        layer,
        offset: chunk * CHUNK_SIZE,
        data: Bytes::new(),
        fua: false,
        missed,
        hold: None,
        epoch,
        generation: 0,
    }
}

/// Records that each of `missed` missed writes to the chunk at `offset` of `layer`; returns
/// whether there were any.
fn record_missed(
    engine: &Engine,
    volume: VolumeId,
    layer: LayerId,
    offset: u64,
    missed: &[ServerId],
) -> Result<bool, ReplicaError> {
    for server in missed {
        engine
            .store()
            .record_missed(volume, layer, offset / CHUNK_SIZE, *server)?;
    }
    Ok(!missed.is_empty())
}

/// The routing epoch of `volume` in this server's management state (0: not known here).
fn known_epoch(engine: &Engine, volume: VolumeId) -> u64 {
    engine.view(volume).map_or(0, |v| v.epoch)
}

/// Admits a change of `[offset, offset+len)` ordered by `order` (see [`crate::order`]): as the
/// chunk's primary, first holds the blocks, waiting for overlapping writes of other gateways to
/// be released; then checks the routing epoch. Answers `NotReady` (the gateway retries) if the
/// blocks stay held too long or the gateway routed by an old epoch; otherwise returns the
/// guard to hold while the change is applied.
async fn admit(
    engine: &Engine,
    volume: VolumeId,
    offset: u64,
    len: u64,
    order: Order,
) -> Result<tokio::sync::OwnedRwLockReadGuard<u64>, ReplicaError> {
    let chunk = offset / CHUNK_SIZE;
    if let Some(holder) = order.holder {
        if !engine.ranges.hold(volume, chunk, offset, len, holder).await {
            return Err(ReplicaError::NotReady(format!(
                "chunk {chunk} of volume {volume}: the blocks are held by an overlapping write"
            )));
        }
    }
    let known = known_epoch(engine, volume);
    engine
        .epochs
        .admit(volume, order.epoch, known)
        .await
        .map_err(ReplicaError::Rerouted)
}

/// Admits the marks for `missed` that a change of the chunk at `offset`, routed by `epoch`,
/// records here (see [`crate::seal`]): refused (`Rerouted`, the gateway routes the change again)
/// for a replica being declared in sync, or current by now. Returns the guard to hold until
/// they are recorded.
async fn admit_marks(
    engine: &Engine,
    volume: VolumeId,
    offset: u64,
    missed: &[ServerId],
    epoch: u64,
) -> Result<Option<crate::seal::MarksAdmitted>, ReplicaError> {
    let view = engine.view(volume);
    engine
        .seals
        .admit(
            volume,
            offset / CHUNK_SIZE,
            missed,
            epoch,
            engine.me(),
            view.as_deref(),
        )
        .await
        .map_err(ReplicaError::Rerouted)
}

/// While some replica of `volume` lags (a stale one, or a migration), the lock of the chunk at
/// `offset`: a copy of the chunk from here to a lagging replica holds it (see
/// [`crate::resync`]), so a write lands here before or after the copy, never during it.
async fn copy_lock(
    engine: &Engine,
    volume: VolumeId,
    offset: u64,
) -> Option<tokio::sync::MutexGuard<'_, ()>> {
    let lagging = engine
        .view(volume)
        .is_some_and(|v| v.target.is_some() || !v.stale.is_empty());
    if lagging {
        Some(engine.lock_chunk(volume, offset / CHUNK_SIZE).await)
    } else {
        None
    }
}

/// Writes `data` at `offset` into `layer` (the head) of this server's copy as the chunk's
/// change of write `generation` (0: this replica is the first to apply it and gives it the
/// next one), then records the `missed` replicas; admitted by `order` first (see
/// [`crate::order`]). Returns the generation applied. A write with no data only records the
/// marks, for any live layer (and returns 0).
#[allow(clippy::too_many_arguments)]
pub async fn write(
    engine: &Arc<Engine>,
    volume: VolumeId,
    layer: LayerId,
    offset: u64,
    data: Bytes,
    fua: bool,
    missed: Vec<ServerId>,
    order: Order,
    generation: u64,
) -> Result<u64, ReplicaError> {
    let marks_only = data.is_empty();
    let _admitted = if marks_only {
        // A mark made by an epoch this server has not reached could be copied by an earlier
        // one, which a write the mark is about may still follow (see `put_chunk`).
        let known = known_epoch(engine, volume);
        if order.epoch > known {
            return Err(ReplicaError::NotReady(format!(
                "routing epoch {} of volume {volume} is not known here yet (at {known})",
                order.epoch
            )));
        }
        None
    } else {
        let admitted = admit(engine, volume, offset, data.len() as u64, order).await?;
        check_head(engine, volume, layer)?;
        crate::failpoint::delay("replica::before_apply", || {
            let name = engine
                .view(volume)
                .map(|v| v.name.clone())
                .unwrap_or_default();
            format!("{name}@{}", engine.me())
        })
        .await;
        Some(admitted)
    };
    let marks = admit_marks(engine, volume, offset, &missed, order.epoch).await?;
    let _copy = copy_lock(engine, volume, offset).await;
    let engine = engine.clone();
    blocking(move || {
        let _marks = marks;
        let store = engine.store();
        if marks_only {
            record_missed(&engine, volume, layer, offset, &missed)?;
            store.flush(volume)?;
            return Ok(0);
        }
        let applied = store.write_to(volume, layer, offset, &data, fua, generation)?;
        if record_missed(&engine, volume, layer, offset, &missed)? && fua {
            // The marks recorded after the data must be as durable as it.
            store.flush(volume)?;
        }
        Ok(applied)
    })
    .await
}

/// Zeroes `len` bytes at `offset` of `layer` (the head) as the chunk's change of write
/// `generation` (as for [`write`]), then records the `missed` replicas; admitted by `order`
/// first (see [`crate::order`]). Returns the generation applied.
#[allow(clippy::too_many_arguments)]
pub async fn trim(
    engine: &Arc<Engine>,
    volume: VolumeId,
    layer: LayerId,
    offset: u64,
    len: u64,
    missed: Vec<ServerId>,
    order: Order,
    generation: u64,
) -> Result<u64, ReplicaError> {
    let _admitted = admit(engine, volume, offset, len, order).await?;
    check_head(engine, volume, layer)?;
    let marks = admit_marks(engine, volume, offset, &missed, order.epoch).await?;
    let _copy = copy_lock(engine, volume, offset).await;
    let engine = engine.clone();
    blocking(move || {
        let _marks = marks;
        let applied = engine
            .store()
            .trim_to(volume, layer, offset, len, generation)?;
        record_missed(&engine, volume, layer, offset, &missed)?;
        Ok(applied)
    })
    .await
}

/// Reads `len` bytes at `offset` as of `layer` (`None`: the head).
pub async fn read(
    engine: &Arc<Engine>,
    volume: VolumeId,
    layer: Option<LayerId>,
    offset: u64,
    len: u32,
) -> Result<Bytes, ReplicaError> {
    // Data in the page cache is read here, without a trip through the blocking pool (two
    // thread switches per read); the rest waits for the disk there.
    let mut buf = BytesMut::zeroed(len as usize);
    if engine
        .store()
        .read_cached(volume, layer, offset, &mut buf)?
    {
        return Ok(buf.freeze());
    }
    let engine = engine.clone();
    blocking(move || {
        engine.store().read(volume, layer, offset, &mut buf)?;
        Ok(buf.freeze())
    })
    .await
}

/// Makes every write to this server's copy of `volume` durable.
pub async fn flush(engine: &Arc<Engine>, volume: VolumeId) -> Result<(), ReplicaError> {
    let engine = engine.clone();
    blocking(move || Ok(engine.store().flush(volume)?)).await
}

/// What `len` bytes at `offset` hold as seen from `layer` (`None`: the head), as runs that
/// cover the range exactly (block status).
pub async fn allocation(
    engine: &Arc<Engine>,
    volume: VolumeId,
    layer: Option<LayerId>,
    offset: u64,
    len: u32,
) -> Result<Vec<Run>, ReplicaError> {
    let store = engine.store().clone();
    let extents =
        blocking(move || Ok(store.allocation(volume, layer, offset, u64::from(len))?)).await?;
    Ok(extents
        .into_iter()
        .map(|e| Run {
            // Within `len`, so it fits.
            len: e.len as u32,
            kind: e.kind,
        })
        .collect())
}

/// The digest of `chunk` as read at `layer` (`None`: the head): blake3 of its bytes, and the
/// chunk's write generation there.
pub async fn digest(
    engine: &Arc<Engine>,
    volume: VolumeId,
    layer: Option<LayerId>,
    chunk: u64,
) -> Result<([u8; 32], u64), ReplicaError> {
    let engine = engine.clone();
    blocking(move || {
        let store = engine.store();
        let size = store.volume(volume)?.size;
        let start = chunk * CHUNK_SIZE;
        if start >= size {
            return Err(ReplicaError::OutOfRange(format!(
                "chunk {chunk} is past the end of the volume"
            )));
        }
        let len = CHUNK_SIZE.min(size - start) as usize;
        let mut buf = vec![0u8; len];
        let generation = store.generation(volume, layer, chunk)?;
        store.read(volume, layer, start, &mut buf)?;
        Ok((*blake3::hash(&buf).as_bytes(), generation))
    })
    .await
}

/// This server's image of `chunk` in `layer`.
pub async fn get_chunk(
    engine: &Arc<Engine>,
    volume: VolumeId,
    layer: LayerId,
    chunk: u64,
) -> Result<ChunkImage, ReplicaError> {
    let engine = engine.clone();
    blocking(move || Ok(engine.store().chunk_image(volume, layer, chunk)?)).await
}

/// Replaces this server's image of `chunk` in `layer` (repair or resync; with `durable`,
/// durable on return, otherwise with the next flush), as a change routed by `epoch`, the
/// copying server's: a write of an earlier epoch still on its way here (its gateway gave up
/// on it, and the image already holds it or a later write) lands before the image or is
/// refused, never on top of it (see [`crate::order`]).
pub async fn put_chunk(
    engine: &Arc<Engine>,
    volume: VolumeId,
    layer: LayerId,
    chunk: u64,
    image: ChunkImage,
    durable: bool,
    epoch: u64,
) -> Result<(), ReplicaError> {
    let order = Order {
        epoch,
        holder: None,
    };
    let admitted = admit(engine, volume, chunk * CHUNK_SIZE, CHUNK_SIZE, order).await?;
    let engine = engine.clone();
    blocking(move || {
        let _admitted = admitted;
        Ok(engine
            .store()
            .put_chunk_image(volume, layer, chunk, &image, durable)?)
    })
    .await
}

/// The wire handler: other servers' gateways, resync and verify reach this server's store here.
pub struct ReplicaHandler {
    engine: Arc<Engine>,
}

impl ReplicaHandler {
    /// A handler over `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

fn answer(r: Result<(), ReplicaError>) -> Response {
    match r {
        Ok(()) => Response::Ok,
        Err(e) => e.to_response(),
    }
}

fn applied(r: Result<u64, ReplicaError>) -> Response {
    match r {
        Ok(generation) => Response::Applied { generation },
        Err(e) => e.to_response(),
    }
}

#[async_trait]
impl Handler for ReplicaHandler {
    async fn handle(&self, peer: ServerId, conn: u64, req: Request) -> Response {
        let e = &self.engine;
        let order = |hold: Option<u64>, epoch: u64| Order {
            epoch,
            holder: hold.map(|token| Holder {
                token,
                conn: Some(conn),
            }),
        };
        match req {
            Request::Write {
                volume,
                layer,
                offset,
                data,
                fua,
                missed,
                hold,
                epoch,
                generation,
            } => {
                let tracked = !data.is_empty() && !fua && peer != e.me();
                let order = order(hold, epoch);
                let done = write(
                    e, volume, layer, offset, data, fua, missed, order, generation,
                )
                .await;
                if tracked && done.is_ok() && e.incoming.wrote(conn, peer, volume, layer, offset) {
                    crate::incoming::learn_run(e, conn, peer);
                }
                applied(done)
            }
            Request::Trim {
                volume,
                layer,
                offset,
                len,
                missed,
                hold,
                epoch,
                generation,
            } => {
                let order = order(hold, epoch);
                let done = trim(e, volume, layer, offset, len, missed, order, generation).await;
                if done.is_ok()
                    && peer != e.me()
                    && e.incoming.wrote(conn, peer, volume, layer, offset)
                {
                    crate::incoming::learn_run(e, conn, peer);
                }
                applied(done)
            }
            Request::Read {
                volume,
                layer,
                offset,
                len,
            } => match read(e, volume, layer, offset, len).await {
                Ok(data) => Response::Data(data),
                Err(err) => err.to_response(),
            },
            Request::Allocation {
                volume,
                layer,
                offset,
                len,
            } => match allocation(e, volume, layer, offset, len).await {
                Ok(runs) => Response::Allocation(runs),
                Err(err) => err.to_response(),
            },
            Request::Flush { volume } => {
                let mark = e.incoming.flush_mark();
                let done = flush(e, volume).await;
                if done.is_ok() {
                    e.incoming.flushed(peer, volume, mark);
                }
                answer(done)
            }
            Request::GetChunk {
                volume,
                layer,
                chunk,
            } => match get_chunk(e, volume, layer, chunk).await {
                Ok(img) => Response::Chunk {
                    maps: Box::new(ChunkMaps {
                        data: img.data,
                        zero: img.zero,
                        generation: img.generation,
                    }),
                    blocks: img.blocks,
                },
                Err(err) => err.to_response(),
            },
            Request::PutChunk {
                volume,
                layer,
                chunk,
                durable,
                epoch,
                maps,
                blocks,
            } => {
                let image = ChunkImage {
                    data: maps.data,
                    zero: maps.zero,
                    blocks,
                    generation: maps.generation,
                };
                answer(put_chunk(e, volume, layer, chunk, image, durable, epoch).await)
            }
            Request::Digest {
                volume,
                layer,
                chunk,
            } => match digest(e, volume, layer, chunk).await {
                Ok((digest, generation)) => Response::Digest { digest, generation },
                Err(err) => err.to_response(),
            },
            Request::Ping => Response::Pong { run: e.run() },
            Request::Release {
                volume,
                chunk,
                token,
            } => {
                e.ranges.release(volume, chunk, token);
                Response::Ok
            }
        }
    }

    fn closed(&self, conn: u64) {
        crate::incoming::closed(&self.engine, conn);
    }
}
